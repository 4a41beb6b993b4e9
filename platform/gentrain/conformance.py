"""The family conformance checks: what `gentrain check FAMILY` runs on any family (built-in, an
installed package's or the user's) and what the test suite runs on every built-in one.

Each check builds the family afresh (its smallest-first flavor unless told, its default data, on
the CPU) and raises CheckFailed saying what is wrong. `strategy_support` then says which
strategies the family can train under, and why not for the rest.
"""

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from gentrain import noise
from gentrain.data import Dataset, load_dataset
from gentrain.families import FamilySpec, FamilyStep, PipelineUnsupported, run_blocks
from gentrain.noise import DrawPlan
from gentrain.optim import build_optimizer
from gentrain.spec_sections import DecodingSection, OptimSection
from gentrain.strategies import STRATEGIES

BATCH = 32


class CheckFailed(AssertionError):
    pass


class CheckSkipped(Exception):
    """The check does not apply to this family (it says why)."""


@dataclass
class Subject:
    """A family built for checking: its step, networks (seeded), data and a fixed batch."""

    family: FamilySpec
    flavor: str
    step: FamilyStep
    models: dict[str, torch.nn.Module]
    data: Dataset
    batch: torch.Tensor


def build(family: FamilySpec, flavor: str, data: Dataset | None = None, seed: int = 0) -> Subject:
    data = data or load_dataset(family.default_source)
    torch.manual_seed(seed)
    step = family.make_step()
    models = step.build(family.config(flavor=flavor, overrides={}), data.info)
    return Subject(family, flavor, step, models, data, data.train[:BATCH])


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def _eval_mode(subject: Subject) -> None:
    for model in subject.models.values():
        model.eval()


def finite_loss(subject: Subject) -> str:
    """Each phase names one of the networks and gives a finite scalar loss and scalar terms."""
    step, models = subject.step, subject.models
    missing = [phase for phase in step.phases if phase not in models]
    _expect(not missing, f"phases {missing} name no network that build() returns ({list(models)})")
    for phase in step.phases:
        loss, terms = step.loss(models, subject.batch, phase=phase)
        _expect(isinstance(loss, torch.Tensor) and loss.shape == (), f"{phase}: loss not a scalar")
        _expect(bool(torch.isfinite(loss)), f"{phase}: loss is {loss.item()}")
        for name, value in terms.items():
            _expect(value.shape == () and bool(torch.isfinite(value)), f"{phase}: term {name}")
    return f"phases {', '.join(step.phases)}"


def loss_falls(subject: Subject) -> str:
    """20 updates of each phase on one fixed batch (the same noise each time) lower its loss."""
    step, models, batch = subject.step, subject.models, subject.batch
    falls = []
    for phase in step.phases:
        optimizer = build_optimizer(models[phase].parameters(), OptimSection(lr=1e-3))
        torch.manual_seed(1)
        first, _ = step.loss(models, batch, phase=phase)
        for _ in range(20):
            torch.manual_seed(1)  # the same noise each time: only the weights change
            loss, _ = step.loss(models, batch, phase=phase)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        torch.manual_seed(1)
        last, _ = step.loss(models, batch, phase=phase)
        _expect(last.item() < first.item(), f"{phase} loss did not fall: {first:.4f} -> {last:.4f}")
        falls.append(f"{phase} {first.item():.3g} -> {last.item():.3g}")
    return "; ".join(falls)


def state_dict_round_trip(subject: Subject) -> str:
    """Weights loaded into a scrambled copy give the same losses."""
    step, models = subject.step, subject.models
    clone = {key: copy.deepcopy(model) for key, model in models.items()}
    for model in clone.values():
        for p in model.parameters():
            torch.nn.init.normal_(p)
    for key, model in clone.items():
        model.load_state_dict(models[key].state_dict())
    for phase in step.phases:
        torch.manual_seed(3)
        expected, _ = step.loss(models, subject.batch, phase=phase)
        torch.manual_seed(3)
        actual, _ = step.loss(clone, subject.batch, phase=phase)
        _expect(torch.allclose(actual, expected), f"{phase}: {actual.item()} != {expected.item()}")
    return f"{sum(len(m.state_dict()) for m in models.values())} tensors"


def samples(subject: Subject) -> str:
    """sample(n) gives n examples of the data's shape: images in [-1, 1], token ids in the
    vocabulary."""
    _eval_mode(subject)
    with torch.no_grad():
        drawn = subject.step.sample(subject.models, 5)
    shape = (5, *subject.batch.shape[1:])
    _expect(tuple(drawn.shape) == shape, f"shape {tuple(drawn.shape)}, expected {shape}")
    if subject.family.modality == "image":
        low, high = drawn.min().item(), drawn.max().item()
        _expect(low >= -1 and high <= 1, f"values in [{low:.3g}, {high:.3g}], not [-1, 1]")
        return f"{shape}, in [{low:.2f}, {high:.2f}]"
    vocab = subject.data.info.vocab_size
    _expect(drawn.dtype == torch.int64, f"dtype {drawn.dtype}, expected token ids (int64)")
    _expect(0 <= drawn.min() and drawn.max() < vocab, f"ids outside the vocabulary of {vocab}")
    return f"{shape} token ids"


def deterministic(subject: Subject) -> str:
    """The same seed builds the same networks, losses and samples."""
    twin = build(subject.family, subject.flavor, subject.data)
    for phase in subject.step.phases:
        torch.manual_seed(5)
        first, _ = subject.step.loss(subject.models, subject.batch, phase=phase)
        torch.manual_seed(5)
        second, _ = twin.step.loss(twin.models, twin.batch, phase=phase)
        _expect(first.item() == second.item(), f"{phase}: {first.item()} != {second.item()}")
    _eval_mode(subject)
    _eval_mode(twin)
    with torch.no_grad():
        torch.manual_seed(6)
        first = subject.step.sample(subject.models, 3)
        torch.manual_seed(6)
        second = twin.step.sample(twin.models, 3)
    _expect(torch.equal(first, second), "two samples under one seed differ")
    return "losses and samples repeat"


def preview_and_evaluate(subject: Subject) -> str:
    """What the trainer logs at an evaluation: a preview (images of the data's shape, or
    texts) and held-out metrics that `eval_metrics` names."""
    family, heldout = subject.family, subject.data.heldout[:64]
    _eval_mode(subject)
    with torch.no_grad():
        preview = subject.step.preview(subject.models, heldout)
        scores = subject.step.evaluate(subject.models, heldout)
    if family.modality == "image":
        _expect(
            isinstance(preview, torch.Tensor) and preview.shape[1:] == heldout.shape[1:],
            "preview() must give images (n, C, H, W) of the data's shape",
        )
    else:
        _expect(
            bool(preview) and all(isinstance(t, str) for t in preview), "preview: texts expected"
        )
    unknown = set(scores) - set(family.eval_metrics)
    _expect(not unknown, f"evaluate() gives {sorted(unknown)}, not in eval_metrics")
    _expect(all(isinstance(v, float) and v == v for v in scores.values()), "a metric not a float")
    return ", ".join(f"{k} {v:.3g}" for k, v in scores.items()) or "no metrics of its own"


def answers(subject: Subject) -> str:
    """A family offering text-quality metrics answers held-out prompts: `max_new_tokens` tokens
    after each (or one per mask token, for a family that fills), ids of its vocabulary."""
    family, step = subject.family, subject.step
    if not family.text_metrics:
        raise CheckSkipped("the family offers no text-quality metrics")
    _expect(callable(getattr(step, "answer", None)), "text_metrics need the step's answer()")
    _eval_mode(subject)
    decoding = DecodingSection(max_new_tokens=5, temperature=0.8, top_k=10)
    windows = subject.data.heldout[:3]
    if family.answers == "fill":
        prompts, expected = windows.clone(), (3, 4)
        prompts[:, 2:6] = subject.data.info.mask_id
    else:
        prompts, expected = windows[:, : windows.shape[1] // 2], (3, 5)
    with torch.no_grad():
        written = step.answer(subject.models, prompts, decoding)
    _expect(
        tuple(written.shape) == expected, f"answers shaped {tuple(written.shape)}, not {expected}"
    )
    vocab = subject.data.info.vocab_size
    _expect(
        bool(((written >= 0) & (written < vocab)).all()), f"ids outside the vocabulary ({vocab})"
    )
    return f"{family.answers}s: {tuple(written.shape)}"


def export(subject: Subject) -> str:
    """The exported module runs on its example input."""
    module, example = subject.step.export(subject.models)
    module.eval()
    with torch.no_grad():
        output = module(example)
    outputs = output if isinstance(output, tuple) else (output,)
    _expect(all(torch.isfinite(o).all() for o in outputs), "non-finite output on its example")
    return f"{type(module).__name__} on {tuple(example.shape)}"


def pipeline_composes(subject: Subject) -> str:
    """Run block by block, as a pipeline runs them, each phase gives loss() under the same noise;
    every phase's blocks have the same sizes, so a pipeline cuts every phase alike."""
    step = subject.step
    if not callable(getattr(step, "pipeline", None)):
        raise CheckSkipped("the step defines no pipeline()")
    _eval_mode(subject)  # dropout off; the same normalisation either way
    batch, sizes = subject.batch, set()
    for phase in step.phases:
        plan = dict(seed=0, step=1, phase=phase, first_row=0, global_rows=len(batch))
        with noise.planned(DrawPlan(**plan)):
            expected, expected_terms = step.loss(subject.models, batch, phase=phase)
        try:
            form = step.pipeline(subject.models, phase=phase)
        except PipelineUnsupported as unsupported:
            raise CheckSkipped(str(unsupported)) from None
        with noise.planned(DrawPlan(**plan)):
            args, target = form.inputs(batch)
        loss, terms = form.loss(run_blocks(form.blocks, args), target)
        _expect(
            torch.allclose(loss, expected, rtol=1e-5, atol=1e-6),
            f"{phase}: blocks give {loss.item()}, loss() {expected.item()}",
        )
        _expect(terms.keys() == expected_terms.keys(), f"{phase}: terms differ from loss()'s")
        _expect(len(form.blocks) >= 2, f"{phase}: a pipeline needs at least two blocks")
        sizes.add(tuple(sum(p.numel() for p in b.parameters()) for b in form.blocks))
    _expect(len(sizes) == 1, f"phases cut into blocks of different sizes: {sizes}")
    return f"{len(form.blocks)} blocks"


CHECKS: dict[str, Callable[[Subject], str]] = {
    "finite loss": finite_loss,
    "loss falls": loss_falls,
    "state dict round trip": state_dict_round_trip,
    "samples": samples,
    "deterministic": deterministic,
    "preview and evaluate": preview_and_evaluate,
    "answers": answers,
    "export": export,
    "pipeline composes": pipeline_composes,
}


@dataclass(frozen=True)
class Outcome:
    check: str
    result: Literal["pass", "FAIL", "skip"]
    detail: str
    seconds: float


def run_checks(family: FamilySpec, *, flavor: str) -> list[Outcome]:
    """Every check on a fresh build of the family; an error in the family's code fails that
    check (its type and message are the detail)."""
    data = load_dataset(family.default_source)
    outcomes = []
    for name, check in CHECKS.items():
        start = time.perf_counter()
        try:
            result, detail = "pass", check(build(family, flavor, data))
        except CheckSkipped as skipped:
            result, detail = "skip", str(skipped)
        except CheckFailed as failure:
            result, detail = "FAIL", str(failure)
        except Exception as err:
            result, detail = "FAIL", f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
        outcomes.append(Outcome(name, result, detail, time.perf_counter() - start))
    return outcomes


def strategy_support(family: FamilySpec, outcomes: list[Outcome]) -> list[tuple[str, bool, str]]:
    """(strategy, supported, why) for each strategy gentrain has."""
    passed = {o.check: o.result == "pass" for o in outcomes}
    pipeline = next(o for o in outcomes if o.check == "pipeline composes")
    step = family.step_class().__name__
    support = []
    for strategy in STRATEGIES:
        if strategy == "pipeline" and family.lacks("pipeline"):
            support.append((strategy, False, f"{step} defines no pipeline()"))
        elif strategy == "pipeline" and pipeline.result == "skip":
            support.append((strategy, False, pipeline.detail))
        elif strategy == "pipeline" and not passed["pipeline composes"]:
            support.append((strategy, False, "its pipeline blocks do not compose to loss()"))
        elif not passed["finite loss"]:
            support.append((strategy, False, "loss() does not give a finite scalar"))
        elif strategy == "pipeline":
            support.append((strategy, True, "cut between the blocks of pipeline()"))
        else:
            support.append((strategy, True, "needs only loss()"))
    return support

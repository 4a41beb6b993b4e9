"""Every registered family honours the family interface (tiny debug flavors, CPU)."""

import copy

import pytest
import torch

from gentrain import noise
from gentrain.data import load_dataset
from gentrain.families import all_families, run_blocks
from gentrain.noise import DrawPlan
from gentrain.optim import build_optimizer
from gentrain.spec import OptimSection

FAMILIES = sorted(all_families())


def _build(name: str):
    family = all_families()[name]
    torch.manual_seed(0)
    step = family.make_step()
    data = load_dataset(family.default_source)
    models = step.build(family.config(flavor="debug", overrides={}), data.info)
    return family, step, models, data.train[:32]


@pytest.mark.parametrize("name", FAMILIES)
def test_every_phase_gives_a_finite_scalar_loss_and_named_terms(name):
    family, step, models, batch = _build(name)
    assert set(step.phases) <= set(models), "each phase updates one of the family's networks"
    for phase in step.phases:
        loss, terms = step.loss(models, batch, phase=phase)
        assert loss.shape == () and torch.isfinite(loss)
        assert all(torch.isfinite(v) and v.shape == () for v in terms.values())


@pytest.mark.parametrize("name", FAMILIES)
def test_updating_a_phase_on_a_fixed_batch_reduces_its_loss(name):
    family, step, models, batch = _build(name)
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
        assert last.item() < first.item(), f"{phase} loss did not fall: {first:.4f} -> {last:.4f}"


@pytest.mark.parametrize("name", FAMILIES)
def test_state_dict_round_trip_reproduces_outputs(name):
    family, step, models, batch = _build(name)
    clone = {key: copy.deepcopy(model) for key, model in models.items()}
    for model in clone.values():
        for p in model.parameters():
            torch.nn.init.normal_(p)
    for key, model in clone.items():
        model.load_state_dict(models[key].state_dict())
    for phase in step.phases:
        torch.manual_seed(3)
        expected, _ = step.loss(models, batch, phase=phase)
        torch.manual_seed(3)
        actual, _ = step.loss(clone, batch, phase=phase)
        torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("name", FAMILIES)
def test_samples_have_the_data_shape_and_range(name):
    family, step, models, batch = _build(name)
    for model in models.values():
        model.eval()
    samples = step.sample(models, 5)
    assert samples.shape == (5, *batch.shape[1:])
    if family.modality == "image":
        assert samples.min() >= -1 and samples.max() <= 1
    else:
        vocab = load_dataset(family.default_source).info.vocab_size
        assert samples.dtype == torch.int64 and 0 <= samples.min() and samples.max() < vocab


@pytest.mark.parametrize("name", FAMILIES)
def test_exported_module_runs_on_its_example_input(name):
    family, step, models, _ = _build(name)
    module, example = step.export(models)
    module.eval()
    with torch.no_grad():
        assert torch.isfinite(module(example)).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_every_flavor_builds(name):
    family = all_families()[name]
    step = family.make_step()
    data = load_dataset(family.default_source)
    sizes = []
    for flavor in family.flavors:
        models = step.build(family.config(flavor=flavor, overrides={}), data.info)
        sizes.append(sum(p.numel() for m in models.values() for p in m.parameters()))
    assert sizes == sorted(sizes), "flavors grow from debug to base"


@pytest.mark.parametrize("name", FAMILIES)
def test_losses_and_samples_are_deterministic_under_a_seed(name):
    _, step_a, models_a, batch = _build(name)
    _, step_b, models_b, _ = _build(name)
    for phase in step_a.phases:
        torch.manual_seed(5)
        loss_a, _ = step_a.loss(models_a, batch, phase=phase)
        torch.manual_seed(5)
        loss_b, _ = step_b.loss(models_b, batch, phase=phase)
        assert loss_a.item() == loss_b.item()
    for models in (models_a, models_b):
        for model in models.values():
            model.eval()
    torch.manual_seed(6)
    first = step_a.sample(models_a, 3)
    torch.manual_seed(6)
    assert torch.equal(first, step_b.sample(models_b, 3))


@pytest.mark.parametrize("name", FAMILIES)
def test_preview_and_evaluate_give_what_the_trainer_logs(name):
    family, step, models, _ = _build(name)
    heldout = load_dataset(family.default_source).heldout[:64]
    for model in models.values():
        model.eval()
    with torch.no_grad():
        preview = step.preview(models, heldout)
        scores = step.evaluate(models, heldout)
    if family.modality == "image":
        assert preview.ndim == 4 and preview.shape[1:] == heldout.shape[1:]
    else:
        assert preview and all(isinstance(text, str) for text in preview)
    assert set(scores) <= set(family.eval_metrics)
    assert all(isinstance(v, float) and v == v for v in scores.values())


@pytest.mark.parametrize("name", FAMILIES)
def test_the_pipeline_form_computes_the_phase_loss(name):
    """Run block by block, as a pipeline would, each phase gives loss() under the same noise;
    every phase's blocks have the same sizes, so a pipeline cuts every phase alike."""
    family, step, models, batch = _build(name)
    for model in models.values():
        model.eval()  # dropout off; the same normalisation either way
    sizes = set()
    for phase in step.phases:
        plan = dict(seed=0, step=1, phase=phase, first_row=0, global_rows=len(batch))
        with noise.planned(DrawPlan(**plan)):
            expected, expected_terms = step.loss(models, batch, phase=phase)
        form = step.pipeline(models, phase=phase)
        with noise.planned(DrawPlan(**plan)):
            args, target = form.inputs(batch)
        loss, terms = form.loss(run_blocks(form.blocks, args), target)
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
        assert terms.keys() == expected_terms.keys()
        assert len(form.blocks) >= 2, "a pipeline needs at least two blocks to cut between"
        sizes.add(tuple(sum(p.numel() for p in b.parameters()) for b in form.blocks))
    assert len(sizes) == 1, sizes

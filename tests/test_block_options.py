"""train.activation_checkpointing and train.compile (issue 30): per block, every family, the
same losses as without. One worker, in this process (the options act inside a worker alike under
ddp and fsdp; test_matrix trains fsdp with activation checkpointing on 2 Ray workers)."""

import mlflow
import pytest
import torch

from conftest import JOBS
from gentrain import spec as spec_module
from gentrain import tracking, trainer
from gentrain.families import TEXT_QUALITY
from test_matrix import FAMILY_JOBS

STEPS = 4


def _losses(family: str, tmp_path, *options: str) -> list[float]:
    job = spec_module.load(JOBS / FAMILY_JOBS[family])
    kept = [m for m in job.eval_metrics if m not in ("fid", "is", *TEXT_QUALITY)]
    spec = spec_module.load(
        JOBS / FAMILY_JOBS[family],
        [
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"storage.path={tmp_path / 'checkpoints'}",
            "model.flavor=debug",
            "data.batch_size=8",
            "train.workers=1",
            f"train.max_steps={STEPS}",
            "train.log_every=1",
            f"train.eval_every={STEPS}",
            f"train.checkpoint_every={STEPS}",
            f"eval.metrics=[{', '.join(kept)}]",
            "eval.num_samples=8",
            *options,
        ],
    )
    uri = tracking.resolve_tracking_uri(spec)
    run_id = tracking.start_run(spec, uri=uri)
    threads = torch.get_num_threads()
    try:
        trainer.train(
            {"spec": spec.to_dict(), "run_id": run_id, "tracking_uri": uri, "threads": 2},
            trainer.PlainSession(),
        )
    finally:
        torch.set_num_threads(threads)
    history = mlflow.MlflowClient(uri).get_metric_history(run_id, "loss")
    return [m.value for m in sorted(history, key=lambda m: m.step)]


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILY_JOBS))
def test_activation_checkpointing_keeps_the_losses(family, new_store, tmp_path):
    new_store(tmp_path)
    plain = _losses(family, tmp_path)
    recomputed = _losses(family, tmp_path, "train.activation_checkpointing=true")
    # Within 1e-4, as strategies agree: a recomputed forward advances a network's own state
    # once more (the GAN's spectral-norm power iteration, BatchNorm's running statistics).
    assert len(plain) == STEPS and recomputed == pytest.approx(plain, rel=1e-4)


@pytest.mark.parametrize("family", list(FAMILY_JOBS))
def test_every_block_is_recomputed_in_the_backward(family):
    """The units found in each family's networks run again in the backward with activation
    checkpointing, once without."""
    from gentrain.data import open_data
    from gentrain.families import get_family
    from gentrain.strategies import blocks

    spec = spec_module.load(JOBS / FAMILY_JOBS[family], ["model.flavor=debug"])
    recompute = spec.train.model_copy(update={"activation_checkpointing": True})
    family_spec = get_family(spec.model.family)
    data = open_data(spec.data)
    batch = next(data.stream.batches(batch_size=4, rank=0, world=1))[0]
    for checkpointed in (False, True):
        step_fn = family_spec.make_step()
        torch.manual_seed(0)
        models = step_fn.build(family_spec.config(flavor="debug", overrides={}), data.info)
        found = blocks.of_family(models, step_fn)
        calls: dict[int, int] = {}

        def counted(unit, forward=None, calls=calls):
            def forward_counted(*args, **kwargs):
                calls[id(unit)] = calls.get(id(unit), 0) + 1
                return forward(*args, **kwargs)

            return forward_counted

        for model in models.values():
            units = blocks.units(model, found)
            for unit in units:  # the recomputation runs forward again (without its hooks)
                unit.forward = counted(unit, unit.forward)
            if checkpointed:
                blocks.checkpoint_and_compile(model, units, recompute)
        loss, _ = step_fn.loss(models, batch, phase=step_fn.phases[-1])
        ran = dict(calls)
        assert len(ran) > 1, family
        loss.backward()
        assert set(calls) == set(ran), family
        recomputed = [unit for unit, n in ran.items() if calls[unit] == 2 * n]
        if not checkpointed:
            assert calls == ran, family
        else:  # a block that saves no tensor for its backward has nothing to recompute
            assert all(calls[unit] in (n, 2 * n) for unit, n in ran.items()), family
            assert len(recomputed) > len(ran) / 2, family

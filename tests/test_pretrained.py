"""model.init_from: weights from a gentrain checkpoint or an MLflow model; mismatch: one line."""

import pytest
import torch

from gentrain import spec as spec_module
from gentrain import tracking
from gentrain.data import load_dataset
from gentrain.errors import GentrainError
from gentrain.families import get_family
from gentrain.pretrained import load_initial_weights
from gentrain.strategies.ddp import DDPStrategy

SPEC = spec_module.validate({"name": "src", "model": {"family": "gan", "flavor": "debug"}})


def _models(flavor: str = "debug", seed: int = 0):
    family = get_family("gan")
    step = family.make_step()
    torch.manual_seed(seed)
    config = family.config(flavor=flavor, overrides={})
    return step, step.build(config, load_dataset("builtin:digits").info)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    ours, theirs = a.state_dict(), b.state_dict()
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.fixture
def checkpoint(tmp_path):
    step, models = _models(seed=1)
    strategy = DDPStrategy(SPEC, device=torch.device("cpu"), world=1, rank=0)
    strategy.prepare(models, step)
    strategy.save(tmp_path, rank=0)
    return tmp_path, models


@pytest.mark.parametrize("written", ["dcp", "older single file"])
def test_checkpoint_weights_initialise_every_network(checkpoint, written):
    directory, trained = checkpoint
    step, fresh = _models(seed=2)
    assert not _same(fresh["generator"], trained["generator"])
    source = str(directory)
    if written == "older single file":  # a ddp checkpoint before DCP: rank 0's strategy.pt
        source = str(directory / "strategy.pt")
        torch.save({name: {"model": m.state_dict()} for name, m in trained.items()}, source)
    load_initial_weights(source, step_fn=step, models=fresh, tracking_uri="unused")
    for name in fresh:
        assert _same(fresh[name], trained[name]), name


def test_an_architecture_mismatch_is_one_clear_line(checkpoint):
    directory, _ = checkpoint
    step, bigger = _models(flavor="small")
    with pytest.raises(GentrainError) as caught:
        load_initial_weights(str(directory), step_fn=step, models=bigger, tracking_uri="unused")
    message = str(caught.value)
    assert message.startswith(f"model.init_from: {directory} does not fit this model (")
    assert "there" in message and "here" in message and "\n" not in message


def test_a_logged_mlflow_model_initialises_the_exported_network(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = spec_module.validate({**SPEC.to_dict(), "tracking": {"register_as": "gan-src"}})
    run_id = tracking.start_run(spec, uri=uri)
    step, trained = _models(seed=3)
    module, example = step.export(trained)
    logger = tracking.RunLogger(uri=uri, run_id=run_id, outbox=tmp_path / "outbox")
    logger.log_model(module, example_input=example, register_as="gan-src", step=1)
    assert logger.close(timeout=120), "the store took the model"
    for source in (f"runs:/{run_id}/model", "models:/gan-src/1"):
        step, fresh = _models(seed=4)
        load_initial_weights(source, step_fn=step, models=fresh, tracking_uri=uri)
        assert _same(fresh["generator"], trained["generator"]), source
    with pytest.raises(GentrainError, match="model.init_from: cannot load runs:/nope/model"):
        load_initial_weights("runs:/nope/model", step_fn=step, models=fresh, tracking_uri=uri)

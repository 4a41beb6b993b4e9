"""Models of a run: the final one saved and logged as an MLflow PyTorch model (and loaded back),
and its checkpoints as logged models linked to their step's metrics."""

from contextlib import contextmanager
from pathlib import Path

from gentrain.errors import GentrainError, first_line
from gentrain.tracking.store import client_for


def model_format(module) -> dict:
    """How gentrain saves and logs a model: pickled with gentrain's code (and the user's, for a
    family of their own), torch pinned."""
    import torch

    import gentrain
    from gentrain.families.user import code_to_ship

    code = [str(Path(gentrain.__file__).parent)]
    user_code = code_to_ship(f"{type(module).__module__}:_")
    if user_code:
        code.append(str(user_code))
    return {
        "code_paths": code,
        "pip_requirements": [f"torch=={torch.__version__.split('+')[0]}"],
        "serialization_format": "pickle",  # keeps the module whole: sample() and all
    }


@contextmanager
def no_requirement_scan():
    """MLflow checks a model's pip requirements against the files of every installed package,
    only to warn of a mismatch: 4 s of CPU at the end of each run here. gentrain's requirements
    are the installed torch and mlflow, which cannot mismatch."""
    from mlflow.utils import environment

    name = "warn_dependency_requirement_mismatches"
    scan = getattr(environment, name, None)
    if scan is None:  # another MLflow: its own checks run
        yield
        return
    setattr(environment, name, lambda requirements: None)
    try:
        yield
    finally:
        setattr(environment, name, scan)


def log_pytorch_model(
    module, signature, *, uri: str, run_id: str, register_as: str | None, step: int = 0
):
    """The final model as the run's logged model `model` (MLflow links it to the run's metrics at
    `step`, and the registry shows them), registered as `register_as` when set."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    with _active_run(run_id), no_requirement_scan():
        mlflow.pytorch.log_model(
            module,
            name="model",
            signature=signature,
            registered_model_name=register_as,
            step=step,
            **model_format(module),
        )


def log_checkpoint_model(client, *, run_id: str, step: int, metrics: list, location: str):
    """A checkpoint as a logged model of the run without files of its own (they stay in
    storage.path): named checkpoint-step-<step>, the run's output at `step`, linked to the
    metrics logged at that step (`metrics`: [key, value, timestamp, step] as the run has them),
    so that a run's checkpoints are compared as models are."""
    from mlflow.entities import LoggedModelOutput, Metric

    experiment_id = client.get_run(run_id).info.experiment_id
    model = client.create_logged_model(
        experiment_id,
        name=f"checkpoint-step-{step}",
        source_run_id=run_id,
        tags={"gentrain.checkpoint_step": str(step), "gentrain.checkpoints": location},
        model_type="gentrain checkpoint",
    )
    client.log_outputs(run_id, models=[LoggedModelOutput(model.model_id, step=step)])
    # the run's own metrics, now also the model's (the run keeps one of each: same timestamps)
    linked = [Metric(key, value, ms, at, model_id=model.model_id) for key, value, ms, at in metrics]
    if linked:
        client.log_batch(run_id, metrics=linked)
    client.finalize_logged_model(model.model_id, "READY")


class _active_run:
    """mlflow.start_run for logging only: leaving it must not end the driver's run."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def __enter__(self):
        import mlflow

        mlflow.start_run(run_id=self.run_id)

    def __exit__(self, *exc):
        import mlflow

        status = mlflow.get_run(self.run_id).info.status
        mlflow.end_run()
        client_for(mlflow.get_tracking_uri()).update_run(self.run_id, status=status)
        return False


def load_model_state(model_uri: str, *, uri: str) -> dict:
    """The state dict of an MLflow PyTorch model (`runs:/...` or `models:/...`)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        module = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    except Exception as err:  # MLflow's errors vary by store and URI form
        raise GentrainError(
            f"model.init_from: cannot load {model_uri}: {first_line(err)}"
        ) from None
    return module.state_dict()

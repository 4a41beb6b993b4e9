"""Inside a sweep's trial: the sampled values on the base spec, trained as one gentrain run (in
the trial's own process for one worker, a nested Ray Train run for more)."""

import os
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from ray import tune

from gentrain import cluster, launch, tracking
from gentrain.errors import traceback_of
from gentrain.spec import JobSpec, trial_spec
from gentrain.tracking.heartbeat import Heartbeat


def trial(config: dict[str, Any], *, setup: dict[str, Any]) -> None:
    """One trial: the sampled values on the base spec, validated, trained as a gentrain run."""
    values = {key: config[key] for key in setup["keys"]}
    spec = trial_spec(setup["base"], values)
    uri, trial_id = setup["uri"], tune.get_context().get_trial_id()
    run_id, finished = tracking.trial_run(
        spec, uri=uri, parent_id=setup["parent"], trial_id=trial_id, values=values
    )
    if finished is not None:  # ended just before the sweep's driver died, after Tune last saved
        tune.report(finished)
        return
    heartbeat = Heartbeat(run_id, uri=uri, owner=cluster.this_process())
    heartbeat.start()
    try:
        if spec.train.workers == 1:
            from gentrain import trainer

            _single_process_group(spec)
            config = {
                "spec": spec.to_dict(),
                "run_id": run_id,
                "tracking_uri": uri,
                "threads": setup["threads"],
                "checkpoints": tune.get_context().get_trial_dir(),
            }
            trainer.train(config, _TrialSession(spec, heartbeat))
        else:
            from ray.tune.integration.ray_train import TuneReportCallback

            callbacks = [TuneReportCallback()]
            launch.fit(spec, run_id=run_id, uri=uri, callbacks=callbacks, heartbeat=heartbeat)
    except SystemExit:  # a scheduler stopped the trial: the sweep's callback ends its run
        raise
    except BaseException as err:
        reason = launch.failure_reason(err)
        launch.end_run(run_id, uri=uri, status="FAILED", reason=reason, error=traceback_of(err))
        raise
    finally:
        heartbeat.stop()
    launch.end_run(run_id, uri=uri, status="FINISHED")


class _TrialSession:
    """A single-worker trial reports to Ray Tune, which keeps its checkpoints and hands back the
    one to resume from (its own after a restore, a better trial's after a PBT exploit)."""

    rank, world, node, one_node = 0, 1, 0, True  # each trial's run shows its machine

    def __init__(self, spec: JobSpec, heartbeat: Heartbeat):
        cuda = spec.train.use_gpu and torch.cuda.is_available()
        self.device = torch.device("cuda", 0) if cuda else torch.device("cpu")
        self.heartbeat = heartbeat

    def resume_from(self):
        return tune.get_checkpoint()

    def report(self, metrics: dict[str, float], checkpoint: Path | None = None) -> None:
        saved = tune.Checkpoint.from_directory(checkpoint) if checkpoint else None
        tune.report(metrics, checkpoint=saved)

    def beat(self, step: int, slowest_step: float) -> None:
        self.heartbeat.step = step  # the trial's own process trains it: no watchdog apart

    def working(self) -> AbstractContextManager:
        return nullcontext()

    def finished(self) -> None:
        pass


def _single_process_group(spec: JobSpec) -> None:
    """DeepSpeed and pipelines talk through torch.distributed even alone: a group of one."""
    import torch.distributed as dist

    if spec.train.strategy == "ddp" or dist.is_initialized():
        return
    backend = "nccl" if spec.train.use_gpu and torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    # what a launcher sets, and DeepSpeed's engine reads, besides the process group
    for name, value in {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(name, value)

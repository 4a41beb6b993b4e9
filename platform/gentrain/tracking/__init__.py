"""Everything MLflow: the run of a job, its params, tags, metrics, samples and model.

The driver opens and closes runs; inside Ray only rank 0 logs, through a RunLogger and its
outbox. One concern a module, imported in one direction: store <- access <- runs <- compare, views;
store <- models; store, runs, models <- outbox <- logger.
"""

from gentrain.tracking.access import check_reachable
from gentrain.tracking.compare import Comparison, compare, log_sweep_outcome
from gentrain.tracking.logger import RunLogger, outbox_dir, outbox_root
from gentrain.tracking.models import load_model_state, log_pytorch_model
from gentrain.tracking.runs import (
    PARENT,
    SAMPLED,
    SWEEP,
    TRIAL_ID,
    check_run_exists,
    check_run_id,
    end_open_trials,
    end_run,
    log_text,
    run_status,
    set_tag,
    start_run,
    start_sweep_run,
    trial_run,
    trial_run_id,
    unfinished_sweep_run,
)
from gentrain.tracking.store import (
    LOCAL_STORE,
    SERVER_ENV,
    client_for,
    is_loopback,
    resolve_tracking_uri,
    ui_command,
    ui_sign_in,
)
from gentrain.tracking.views import save_sweep_view, sweep_view_path

__all__ = [
    "LOCAL_STORE", "PARENT", "SAMPLED", "SERVER_ENV", "SWEEP", "TRIAL_ID", "check_reachable",
    "check_run_exists", "check_run_id", "client_for", "compare", "Comparison", "end_open_trials",
    "end_run", "is_loopback", "log_text", "load_model_state", "log_pytorch_model",
    "log_sweep_outcome", "outbox_dir", "outbox_root", "resolve_tracking_uri", "run_status",
    "RunLogger", "save_sweep_view", "set_tag", "start_run", "start_sweep_run", "sweep_view_path",
    "trial_run", "trial_run_id", "ui_command", "ui_sign_in", "unfinished_sweep_run",
]  # fmt: skip

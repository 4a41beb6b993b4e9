"""What each machine was doing: CPU, memory, disk, network and, where present, GPU utilisation
and memory of every node that runs a worker, through MLflow's system-metrics monitor (the run
page's System metrics). Each node's first worker logs its node's series, and the node's host
as the tag gentrain.node_<N>. A job on one node logs system/<metric>, which the UI shows as
system metrics everywhere; a job on several logs system/node_<N>/<metric>, the names the UI's
run page charts node by node."""

import socket
import threading

from gentrain.tracking.store import client_for


def node_name(node_rank: int) -> str:
    return f"node_{node_rank}"


def start(*, uri: str, run_id: str, node_rank: int, nodes_apart: bool, every_s: float):
    """A started monitor (stop it with stop()); after a resume its steps go on. `nodes_apart`:
    the job has several nodes, whose series are told apart by name."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id,
        sampling_interval=every_s,
        resume_logging=True,
        node_id=node_name(node_rank) if nodes_apart else None,
        tracking_uri=uri,
    )
    monitor.start()
    try:
        client_for(uri).set_tag(run_id, f"gentrain.{node_name(node_rank)}", socket.gethostname())
    except Exception:  # a store that is away: the series still tell the nodes apart
        pass
    return monitor


def stop(monitor, timeout_s: float = 5.0) -> None:
    """Stop `monitor` without waiting on a tracking store that is away: MLflow's finish() joins
    a thread that may be retrying a request for minutes (the run's own logging goes through its
    outbox, and waits there). What the monitor held is sent when the store answers in time."""
    monitor._shutdown_event.set()
    thread = monitor._process
    if thread is not None:
        thread.join(timeout_s)
        if thread.is_alive():
            return  # a daemon thread: it ends with the process
    flush = threading.Thread(target=monitor.mlflow_logger.flush, daemon=True)
    flush.start()
    flush.join(timeout_s)

"""What each machine was doing: CPU, memory, disk, network and, where present, GPU utilisation
and memory of every node that runs a worker, through MLflow's system-metrics monitor (the run
page's System metrics). Each node's first worker logs its node's series as
system/node<N>-<host>/<metric>, so that nodes are told apart."""

import re
import socket
import threading


def node_name(node_rank: int) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"node{node_rank}-{socket.gethostname()}")


def start(*, uri: str, run_id: str, node_rank: int, every_s: float):
    """A started monitor (stop it with stop()); after a resume its steps go on."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id,
        sampling_interval=every_s,
        resume_logging=True,
        node_id=node_name(node_rank),
        tracking_uri=uri,
    )
    monitor.start()
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

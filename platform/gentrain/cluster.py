"""Which Ray a job runs on: an embedded local one started by gentrain, or a running cluster."""

import logging
import os

import ray

EMBEDDED_RAY_TRAIN_SETTINGS = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}


def is_embedded(address: str | None) -> bool:
    """Whether a job with this --address runs on an embedded local Ray (on this machine)."""
    return not (address or os.environ.get("RAY_ADDRESS"))


def connect(address: str | None = None) -> None:
    """Join the Ray at `address` (or RAY_ADDRESS); without one, start an embedded local Ray bound
    to 127.0.0.1. Worker logs stay in Ray's log files: the driver shows progress instead."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    common = {"log_to_driver": False, "logging_level": logging.WARNING, "configure_logging": True}
    if address:
        ray.init(address=address, **common)
        return
    # The embedded Ray's processes inherit these: nothing preempts a single machine, and a short
    # poll lets short jobs start and end promptly.
    for name, value in EMBEDDED_RAY_TRAIN_SETTINGS.items():
        os.environ.setdefault(name, value)
    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, **common)


def available_cpus() -> int:
    return int(ray.cluster_resources().get("CPU", 1))

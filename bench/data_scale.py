"""Data at scale (issue 36): how a worker's peak memory and its time to the first step grow with
the dataset (generated English-like text in Parquet, and 32x32 RGB PNGs in Hugging Face's
Parquet layout), samples/s of one model from streamed prepared shards against tensors held in
memory, streamed from S3 (moto, on loopback) against local disk, and `gentrain prepare`'s
throughput on 1 and 2 Ray CPUs.

    python bench/data_scale.py [--quick] [--json PATH] [--work DIR] [--text-mb 50,500,5000]
        [--images 100000,1000000]

JSON keys: rss_growth and first_step_growth (largest dataset over smallest, worst of text and
images: target <= 1.2), stream_vs_memory (>= 0.95), s3_vs_local, prepare_per_s_1cpu,
prepare_per_s_2cpu, and each measurement by name.
"""

import argparse
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
GENTRAIN = [sys.executable, "-m", "gentrain.cli"]
ROWS_PER_GROUP = {"text": 20_000, "image": 10_000}  # ~10 MB of text, ~25 MB of PNGs


def make_text(path: Path, megabytes: int) -> None:
    """English-like prose: the python_docs corpus's paragraphs, shuffled, repeated to size, each
    row made unique (numbered) so that Parquet stores it as text, not as a dictionary index."""
    from gentrain.data.text import corpus_rows

    paragraphs = [p.strip() for row in corpus_rows("python_docs") for p in row.split("\n\n")]
    paragraphs = [p for p in paragraphs if p]
    rng = np.random.default_rng(0)
    writer, written = None, 0
    while written < megabytes << 20:
        picks = rng.integers(0, len(paragraphs), ROWS_PER_GROUP["text"])
        rows = [f"{paragraphs[i]} ({written + k})" for k, i in enumerate(picks)]
        table = pa.table({"text": rows})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
        written += sum(len(row) for row in rows)
    writer.close()


def make_images(path: Path, count: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    writer = None
    for first in range(0, count, ROWS_PER_GROUP["image"]):
        encoded = []
        for i in range(first, min(count, first + ROWS_PER_GROUP["image"])):
            smooth = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
            buffer = io.BytesIO()
            Image.fromarray(smooth).save(buffer, format="PNG")
            encoded.append({"bytes": buffer.getvalue(), "path": f"{i}.png"})
        table = pa.table({"image": encoded})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


class PeakMemory(threading.Thread):
    """Polls the resident memory of the driver (`pid`) and of Ray Train's workers."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.stop, self.driver, self.workers = pid, threading.Event(), 0, {}

    def run(self) -> None:
        while not self.stop.wait(0.2):
            try:
                self.driver = max(self.driver, psutil.Process(self.pid).memory_info().rss)
            except psutil.Error:
                pass
            for process in psutil.process_iter(["cmdline"]):
                if "RayTrainWorker" in " ".join(process.info["cmdline"] or []):
                    try:
                        rss = process.memory_info().rss
                    except psutil.Error:
                        continue
                    self.workers[process.pid] = max(self.workers.get(process.pid, 0), rss)


def run_job(work: Path, modality: str, source: str, name: str) -> dict:
    """`gentrain run` of the shipped GPT or DCGAN job (debug, 2 workers, 5 steps) on `source`:
    peak memory per worker and of the driver, and seconds from the command to step 1."""
    import mlflow

    spec = REPO / "jobs" / ("gpt_python_docs.yaml" if modality == "text" else "dcgan_digits.yaml")
    store = work / f"mlflow-{name}.db"
    store.unlink(missing_ok=True)  # one run per store
    sets = [
        "model.flavor=debug", "train.workers=2", "train.max_steps=5", "train.log_every=1",
        "train.eval_every=5", "train.checkpoint_every=5", f"data.source={source}",
        "eval.max_examples=256", f"tracking.uri=sqlite:///{store}",
        f"storage.path={work / 'checkpoints'}", f"name=bench-{name}",
    ]  # fmt: skip
    if modality == "image":
        sets += ["data.image_size=32", "data.channels=3", "eval.metrics=[]"]
    command = [*GENTRAIN, "run", str(spec)] + [x for s in sets for x in ("--set", s)]
    started = time.time()
    driver = subprocess.Popen(command, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = PeakMemory(driver.pid)
    peak.start()
    stdout, stderr = driver.communicate(timeout=3600)
    peak.stop.set()
    peak.join()
    if driver.returncode != 0:
        raise SystemExit(f"{name}: gentrain run failed:\n{stderr.decode()[-3000:]}")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name(f"bench-{name}")
    (run,) = client.search_runs([experiment.experiment_id])
    first = min(m.timestamp for m in client.get_metric_history(run.info.run_id, "loss"))
    return {
        "worker_rss_gb": max(peak.workers.values()) / 2**30,
        "driver_rss_gb": peak.driver / 2**30,
        "first_step_s": first / 1000 - started,
    }


def prepare(work: Path, source: str, out: Path, cpus: int, modality: str) -> float:
    """Examples/s of `gentrain prepare` on an embedded Ray of `cpus` CPUs (a fresh process)."""
    extra = "image_size=32, channels=3" if modality == "image" else "seq_len=64"
    code = (
        "import ray, time\n"
        "from gentrain.data.prepare import prepare\n"
        "from gentrain.spec_sections import DataSection\n"
        f"ray.init(num_cpus={cpus}, include_dashboard=False, log_to_driver=False)\n"
        "start = time.perf_counter()\n"
        f"done = prepare(DataSection(source={source!r}, {extra}), {str(out)!r})\n"
        "count = done.examples['train'] + done.examples['heldout']\n"
        "print(count / (time.perf_counter() - start))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=work, capture_output=True, text=True, timeout=7200
    )
    if result.returncode:
        raise SystemExit(f"prepare failed:\n{result.stderr[-3000:]}")
    return float(result.stdout.strip().splitlines()[-1])


def samples_per_s(source_or_tensor, *, steps: int = 60, batch: int = 64) -> float:
    """GPT debug trained in this process on 2 threads: from a stream (prepared:... source) or
    from windows in memory; the first 10 steps are warm-up."""
    import torch

    from gentrain.data import open_data
    from gentrain.families import get_family

    torch.set_num_threads(2)
    family = get_family("gpt")
    step_fn = family.make_step()
    data = open_data(
        source_or_tensor if isinstance(source_or_tensor, str) else "builtin:python_docs"
    )
    torch.manual_seed(0)
    models = step_fn.build(family.config(flavor="debug", overrides={}), data.info)
    optimizer = torch.optim.Adam(models["gpt"].parameters(), lr=1e-3)
    if isinstance(source_or_tensor, str):
        stream = data.stream.batches(batch_size=batch, rank=0, world=1)
        next_batch = lambda: next(stream)[0]  # noqa: E731
    else:
        windows = source_or_tensor
        next_batch = lambda: windows[torch.randint(0, len(windows), (batch,))]  # noqa: E731
    for step in range(steps):
        if step == 10:
            start = time.perf_counter()
        loss, _ = step_fn.loss(models, next_batch(), phase="gpt")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return batch * (steps - 10) / (time.perf_counter() - start)


def upload(local: Path, bucket: str, env: dict) -> str:
    import boto3

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    for path in local.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket, f"prepared/{path.relative_to(local)}")
    return f"s3://{bucket}/prepared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--work", type=Path, default=REPO / ".gentrain" / "bench-data")
    parser.add_argument("--text-mb", default="50,500,5000")
    parser.add_argument("--images", default="100000,1000000")
    args = parser.parse_args()
    text_sizes = [5, 20] if args.quick else [int(x) for x in args.text_mb.split(",")]
    image_counts = [5000, 20000] if args.quick else [int(x) for x in args.images.split(",")]
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, float] = {}
    growth = {"rss": [], "first_step": []}
    for modality, sizes, unit in (("text", text_sizes, "mb"), ("image", image_counts, "")):
        measured = []
        for size in sizes:
            name = f"{modality}{size}{unit}"
            path = work / f"{name}.parquet"
            if not path.exists():
                started = time.perf_counter()
                (make_text if modality == "text" else make_images)(path, size)
                print(f"made {path.name} in {time.perf_counter() - started:.0f} s", flush=True)
            figures = run_job(work, modality, f"parquet:{path}", name)
            measured.append(figures)
            for key, value in figures.items():
                results[f"{name}_{key}"] = round(value, 3)
            print(f"{name}: {figures}", flush=True)
        growth["rss"].append(measured[-1]["worker_rss_gb"] / measured[0]["worker_rss_gb"])
        growth["first_step"].append(measured[-1]["first_step_s"] / measured[0]["first_step_s"])
    results["rss_growth"] = round(max(growth["rss"]), 3)
    results["first_step_growth"] = round(max(growth["first_step"]), 3)

    text = work / f"text{text_sizes[0]}mb.parquet"
    for cpus in (1, 2):
        out = work / f"prepared-{cpus}cpu"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        results[f"prepare_per_s_{cpus}cpu"] = round(
            prepare(work, f"parquet:{text}", out, cpus, "text"), 1
        )
    prepared = work / "prepared-2cpu"

    from gentrain.data import load_dataset

    in_memory = load_dataset(f"prepared:{prepared}").train
    streamed = samples_per_s(f"prepared:{prepared}")
    held = samples_per_s(in_memory)
    results.update(stream_samples_per_s=streamed, memory_samples_per_s=held)
    results["stream_vs_memory"] = round(streamed / held, 3)

    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": "us-east-1",
    }
    os.environ.update(env)
    remote = upload(prepared, "bench-data", env)
    from_s3 = samples_per_s(f"prepared:{remote}")
    results["s3_samples_per_s"] = from_s3
    results["s3_vs_local"] = round(from_s3 / streamed, 3)
    server.stop()

    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width}}  {value:.3f}" if isinstance(value, float) else f"{key}  {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

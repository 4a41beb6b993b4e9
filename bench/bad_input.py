"""How long bad input takes to be refused: `gentrain run` in a fresh process, as a user starts it,
on a sample of the bad-input corpus (tests/test_bad_input.py), each case timed from process start
to exit. Target: under 1 s each.

    python bench/bad_input.py [--repeat N]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GENTRAIN = [sys.executable, "-m", "gentrain.cli"]
SPEC = "name: t\nmodel: {family: gan, flavor: debug}\n"
CASES = {
    "invalid YAML": ("name: [unclosed\n", []),
    "unknown key": (SPEC, ["train.wrkers=2"]),
    "out of range": (SPEC, ["optim.lr=0"]),
    "unknown family": (SPEC, ["model.family=vq"]),
    "python tag": ("name: !!python/object/apply:os.system [echo hi]\n", []),
    "missing data": (SPEC, ["data.source=images:/no/such/dir"]),
    "unreadable image": (SPEC + "data: {source: 'images:pictures', image_size: 8}\n", []),
    "unsupported scheme": (SPEC, ["storage.path=gs://bucket/checkpoints"]),
    "bad tracking uri": (SPEC, ["tracking.uri=mlruns"]),
    "not a FamilySpec": (SPEC, ["model.family=os:system"]),
    # checked by transformers itself, which imports torch
    "unknown hf architecture": (
        "name: t\nmodel: {family: hf_causal_lm, overrides: {architecture: llamax}}\n",
        [],
    ),
}
# the same refusals from the environment: (spec, overrides, environment)
ENVIRONMENT_CASES = {"bad MLFLOW_TRACKING_URI": (SPEC, [], {"MLFLOW_TRACKING_URI": "./mlruns"})}


def refuse(workdir: Path, text: str, overrides: list[str], environment: dict[str, str]) -> float:
    (workdir / "job.yaml").write_text(text)
    args = [arg for item in overrides for arg in ("--set", item)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": "", **environment}
    start = time.perf_counter()
    result = subprocess.run(
        [*GENTRAIN, "run", "job.yaml", *args], cwd=workdir, capture_output=True, text=True, env=env
    )
    seconds = time.perf_counter() - start
    assert result.returncode == 2, result.stderr
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "pictures").mkdir()
        (workdir / "pictures" / "a.png").write_text("not a picture")
        print("== seconds from `gentrain run` starting to its exit 2 (median; target < 1 s)")
        cases = {name: (*case, {}) for name, case in CASES.items()} | ENVIRONMENT_CASES
        for name, (text, overrides, environment) in cases.items():
            times = [refuse(workdir, text, overrides, environment) for _ in range(args.repeat)]
            print(f"{name:24s} {statistics.median(times):.2f} s  (max {max(times):.2f} s)")


if __name__ == "__main__":
    main()

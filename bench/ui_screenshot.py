"""README's screenshot of the MLflow UI comparing two DCGAN runs: their sample grids side by
side at the last evaluation's step, and their FID and loss. Trains two short `small` DCGAN
runs on the digits (two learning rates) into a fresh store, saves a view of those charts,
serves the store with `gentrain ui`, and has headless Chromium (Debian's `chromium`)
photograph it.

    python bench/ui_screenshot.py [--out bench/ui_compare.png] [--steps 300]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GENTRAIN = [sys.executable, "-m", "gentrain.cli"]


def train(workdir: Path, lr: float, steps: int) -> None:
    sets = {
        "model.flavor": "small", "optim.lr": lr, "train.max_steps": steps,
        "train.eval_every": steps // 3, "train.checkpoint_every": steps, "name": f"dcgan-lr{lr}",
        "eval.num_samples": 500, "tracking.experiment": "dcgan-compare",
    }  # fmt: skip
    argv = [*GENTRAIN, "run", str(REPO / "jobs" / "dcgan_digits.yaml")]
    argv += [x for key, value in sets.items() for x in ("--set", f"{key}={value}")]
    subprocess.run(argv, cwd=workdir, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "ui_compare.png")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        print("skipped: needs Debian's chromium")
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for lr in (2e-4, 2e-3):
            train(workdir, lr, args.steps)
        port = 5099
        ui = subprocess.Popen(
            [*GENTRAIN, "ui", "--port", str(port)], cwd=workdir, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "MLFLOW_TRACKING_URI": ""},
        )  # fmt: skip
        try:
            address = f"http://127.0.0.1:{port}"
            for _ in range(240):
                try:
                    urllib.request.urlopen(f"{address}/health", timeout=5)
                    break
                except OSError:
                    time.sleep(0.5)
            import mlflow

            from gentrain.tracking.views import save_view

            client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
            experiment = client.get_experiment_by_name("dcgan-compare")
            charts = [
                {"type": "IMAGE", "imageKeys": ["samples"], "step": args.steps,
                 "showRunParams": False, "displayName": f"samples at step {args.steps}"},
                {"type": "LINE", "metricKey": "fid", "displayName": "FID", "xAxisKey": "step"},
                {"type": "LINE", "metricKey": "loss", "displayName": "loss", "xAxisKey": "step"},
            ]  # fmt: skip
            path = save_view(
                client,
                experiment.experiment_id,
                key="readme",
                name="two DCGAN runs",
                charts=charts,
            )
            url = f"{address}/{path}"
            subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 "--run-all-compositor-stages-before-draw",
                 "--window-size=1600,1500", "--virtual-time-budget=30000",
                 f"--screenshot={args.out.resolve()}", url],
                check=True, capture_output=True,
            )  # fmt: skip
        finally:
            os.killpg(ui.pid, 9)
            ui.wait()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

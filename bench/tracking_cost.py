"""What logging samples costs a run at each evaluation, against a local SQLite store: on the
training side (rank 0 draws the sample grid, or makes the table rows, and puts it in its
outbox) and on the sending side (the outbox's thread logs it to MLflow: the image with its
thumbnail, or the rows appended to the table).

    python bench/tracking_cost.py [--evaluations 10] [--json PATH]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path


def measure(kind: str, evaluations: int, work: Path) -> dict[str, float]:
    import mlflow
    import torch

    from gentrain.tracking import RunLogger

    uri = f"sqlite:///{work / f'{kind}.db'}"
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment(kind)).info.run_id
    logger = RunLogger(uri=uri, run_id=run_id, outbox=work / f"outbox-{kind}")
    grid = torch.rand(64, 3, 32, 32) * 2 - 1
    texts = [f"[prompt]\n{'a prompt ' * 8}\n[reference]\n{'text ' * 40}\n[model]\n{'x' * 200}"] * 8
    log = logger.log_image_grid if kind == "image" else logger.log_texts
    log(grid if kind == "image" else texts, step=0)  # warm-up: imports, the first upload
    logger.outbox.close(timeout=600)
    logger = RunLogger(uri=uri, run_id=run_id, outbox=work / f"outbox-{kind}")
    put = 0.0
    start = time.perf_counter()
    for step in range(1, evaluations + 1):
        began = time.perf_counter()
        if kind == "image":
            logger.log_image_grid(grid, step=step)
        else:
            logger.log_texts(texts, step=step)
        put += time.perf_counter() - began
    assert logger.close(timeout=600), "the store did not take everything"
    total = time.perf_counter() - start
    return {
        f"{kind}_training_side_ms": 1000 * put / evaluations,
        f"{kind}_sent_ms": 1000 * total / evaluations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evaluations", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("image", "table"):
            figures.update(measure(kind, args.evaluations, Path(tmp)))
    for key, value in figures.items():
        print(f"{key:<28}{value:>10.1f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()

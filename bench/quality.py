"""Final quality of each family's shipped job, trained on this machine, next to references: image
FID against the real-vs-real floor and the untrained model's value; GPT / BERT held-out perplexity
against a unigram model's; flow bits/dim.

    python bench/quality.py [--families gan,vae] [--quick] [--json PATH]
"""

import argparse
import json
import math
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def shipped_jobs() -> dict[str, Path]:
    from gentrain import spec

    jobs: dict[str, list[Path]] = defaultdict(list)
    for path in sorted((REPO / "jobs").glob("*.yaml")):
        jobs[spec.load(path).model.family].append(path)
    return {family: paths[0] for family, paths in jobs.items()}


def train(path: Path, *, quick: bool, workdir: Path) -> tuple[dict[str, float], float, object]:
    from gentrain import launch, spec

    overrides = [f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}", f"storage.path={workdir}/ckpt"]
    if quick:
        overrides += [
            "model.flavor=debug",
            "train.max_steps=30",
            "train.eval_every=30",
            "eval.num_samples=100",
        ]
    job = spec.load(path, overrides)
    start = time.perf_counter()
    result = launch.run(job)
    return result.metrics, time.perf_counter() - start, job


def image_references(job) -> dict[str, float]:
    """FID of real held-out vs real train (the floor) and of the untrained model's samples."""
    from gentrain.data import load_dataset
    from gentrain.families import get_family
    from gentrain.metrics import ImageQuality, load_feature_extractor
    from gentrain.spec_sections import default_features

    data = load_dataset(job.data)
    extractor = load_feature_extractor(job.eval.features or default_features(job.data.source))
    quality = ImageQuality(extractor=extractor, real_images=data.heldout)
    family = get_family(job.model.family)
    step = family.make_step()
    torch.manual_seed(job.train.seed)
    config = family.config(flavor=job.model.flavor, overrides=job.model.overrides)
    models = step.build(config, data.info)
    for model in models.values():
        model.eval()
    with torch.no_grad():
        untrained = quality.compute(step.sample(models, job.eval.num_samples))["fid"]
    return {"fid_real_floor": quality.compute(data.train)["fid"], "fid_untrained": untrained}


def unigram_perplexity(job) -> float:
    """Held-out perplexity of token frequencies counted on the train split (add-one smoothed)."""
    from gentrain.data import load_dataset

    data = load_dataset(job.data)
    vocab = data.info.vocab_size
    counts = torch.bincount(data.train.flatten(), minlength=vocab).double() + 1
    log_probs = (counts / counts.sum()).log()
    return math.exp(-log_probs[data.heldout.flatten()].mean().item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", help="comma-separated; default: every family with a job")
    parser.add_argument("--quick", action="store_true", help="debug flavors, 30 steps")
    parser.add_argument("--json", type=Path, help="write the figures as flat JSON")
    args = parser.parse_args()
    jobs = shipped_jobs()
    wanted = args.families.split(",") if args.families else sorted(jobs)

    figures: dict[str, float] = {}
    rows = []
    for family in wanted:
        with tempfile.TemporaryDirectory() as tmp:
            metrics, seconds, job = train(jobs[family], quick=args.quick, workdir=Path(tmp))
        figures[f"{family}.minutes"] = seconds / 60
        if "fid" in metrics:
            refs = image_references(job)
            figures.update(
                {f"{family}.fid": metrics["fid"], **{f"{family}.{k}": v for k, v in refs.items()}}
            )
            floor, untrained = refs["fid_real_floor"], refs["fid_untrained"]
            reference = f"real-vs-real {floor:.2f}, untrained {untrained:.1f}"
            rows.append((family, "fid", metrics["fid"], reference))
        if "perplexity" in metrics:
            baseline = unigram_perplexity(job)
            figures.update(
                {f"{family}.perplexity": metrics["perplexity"], f"{family}.unigram": baseline}
            )
            rows.append((family, "perplexity", metrics["perplexity"], f"unigram {baseline:.2f}"))
        if "is" in metrics:
            figures[f"{family}.is"] = metrics["is"]
            rows.append((family, "is", metrics["is"], "Inception Score: higher is better"))
        if "mlm_accuracy" in metrics:
            figures[f"{family}.mlm_accuracy"] = metrics["mlm_accuracy"]
            rows.append((family, "mlm_acc", metrics["mlm_accuracy"], "masked bytes recovered"))
        if "bits_per_dim" in metrics:
            figures[f"{family}.bits_per_dim"] = metrics["bits_per_dim"]
            rows.append((family, "bits/dim", metrics["bits_per_dim"], ""))
        rows.append((family, "minutes", seconds / 60, "training wall time, start-up included"))

    print(f"{'family':<10}{'metric':<12}{'value':>10}  reference")
    for family, metric, value, reference in rows:
        print(f"{family:<10}{metric:<12}{value:>10.3f}  {reference}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

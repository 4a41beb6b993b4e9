"""Text quality of the shipped GPT job, trained on this machine, next to references answering the
same held-out questions: the true continuation itself (the ceiling), the untrained model and a
unigram sampler; the time an evaluation takes per 100 answers; and the share of the job's wall time
its evaluations take (the goal: at most 20%).

    python bench/text_quality.py [--quick] [--json PATH]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import mlflow
import torch

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "jobs" / "gpt_python_docs.yaml"


def train(*, quick: bool, workdir: Path):
    """The job's run (launch.run's result), its wall time and the job."""
    from gentrain import launch, spec

    overrides = [f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}", f"storage.path={workdir}/ckpt"]
    if quick:
        overrides += ["model.flavor=debug", "train.max_steps=60", "train.eval_every=30"]
    job = spec.load(JOB, overrides)
    start = time.perf_counter()
    result = launch.run(job)
    return result, time.perf_counter() - start, job


def references(job, trained, *, count: int) -> dict[str, dict[str, float]]:
    """Each answerer's metrics on the job's own held-out questions, and the seconds the trained
    model's evaluation took."""
    from gentrain.data import load_dataset
    from gentrain.data.text import ByteTokenizer
    from gentrain.families import get_family
    from gentrain.metrics.text import TextQuality

    data = load_dataset(job.data)
    quality = TextQuality(
        metrics=job.text_metrics,
        heldout=data.heldout[: job.eval.max_examples],
        encode=ByteTokenizer().encode,  # the job's tokens are bytes
        decode=data.info.decode,
        count=count,
        max_new_tokens=job.eval.decoding.max_new_tokens,
    )
    decoding, new = job.eval.decoding, job.eval.decoding.max_new_tokens
    half = data.heldout.shape[1] // 2
    truths = {tuple(w[:half].tolist()): w[half : half + new] for w in data.heldout[:count]}
    counts = torch.bincount(data.train.flatten(), minlength=data.info.vocab_size).double() + 1
    family = get_family(job.model.family)
    torch.manual_seed(job.train.seed)
    step = family.make_step()
    untrained = step.build(
        family.config(flavor=job.model.flavor, overrides=job.model.overrides), data.info
    )["gpt"].eval()

    def model_answers(model):
        return lambda prompts: model.generate(
            prompts, new, temperature=decoding.temperature, top_k=decoding.top_k,
            top_p=decoding.top_p,
        )[:, prompts.shape[1] :]  # fmt: skip

    answerers = {
        "trained": model_answers(trained),
        "truth (ceiling)": lambda prompts: torch.stack(
            [truths[tuple(p.tolist())] for p in prompts]
        ),
        "untrained": model_answers(untrained),
        "unigram": lambda prompts: torch.multinomial(counts, len(prompts) * new, True).view(
            -1, new
        ),
    }
    found = {}
    for name, answer in answerers.items():
        torch.manual_seed(decoding.seed)
        start = time.perf_counter()
        with torch.no_grad():
            found[name], _ = quality.compute(answer, device=torch.device("cpu"), step=0)
        found[name]["seconds_per_100"] = (time.perf_counter() - start) * 100 / count
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="debug flavor, 60 steps")
    parser.add_argument("--json", type=Path, help="write the figures as flat JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result, seconds, job = train(quick=args.quick, workdir=Path(tmp))
        client = mlflow.MlflowClient(result.tracking_uri)
        evals = client.get_metric_history(result.run_id, "eval_seconds")
        mlflow.set_tracking_uri(result.tracking_uri)
        trained = mlflow.pytorch.load_model(f"runs:/{result.run_id}/model").eval()
        found = references(job, trained, count=job.eval.num_answers)
    metrics = [*job.text_metrics]
    figures: dict[str, float] = {
        "wall_seconds": seconds,
        "eval_seconds": sum(m.value for m in evals),
        "evaluations": len(evals),
        "eval_share": sum(m.value for m in evals) / seconds,
    }
    print(f"{'answers by':<18}" + "".join(f"{m:>14}" for m in metrics) + f"{'s / 100':>10}")
    for name, values in found.items():
        cells = "".join(
            f"{values[m]:>7.2f} ({values[m + '_raw']:.2f})"
            if m != "mauve"
            else f"{values[m]:>14.3f}"
            for m in metrics
        )
        print(f"{name:<18}{cells}{values['seconds_per_100']:>10.1f}")
        figures.update({f"{name.split()[0]}.{key}": value for key, value in values.items()})
    print(
        f"\nthe job: {seconds:.0f} s wall, {len(evals)} evaluations taking "
        f"{figures['eval_seconds']:.0f} s = {100 * figures['eval_share']:.1f}% (goal <= 20%); "
        f"held-out perplexity {result.metrics.get('perplexity', float('nan')):.2f}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

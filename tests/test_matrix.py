"""Every family under every strategy on a real local Ray with 2 gloo workers (debug flavors, a
few steps): the loss falls, the run ends with its model in MLflow."""

import math
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pytest
import ray
import torch

from conftest import JOBS, sample_grids, sample_texts
from gentrain import launch, tracking, trainer
from gentrain import spec as spec_module
from gentrain.data import load_dataset
from gentrain.families import TEXT_QUALITY, all_families

DEEPSPEED = ["train.strategy=deepspeed"]

# --- every family under every strategy ------------------------------------------------------

FAMILY_JOBS = {
    "gan": "dcgan_digits.yaml",
    "vae": "vae_digits.yaml",
    "diffusion": "diffusion_digits.yaml",
    "flow": "flow_digits.yaml",
    "gpt": "gpt_python_docs.yaml",
    "bert": "bert_python_docs.yaml",
    "hf_causal_lm": "hf_llama_python_docs.yaml",
    "hf_masked_lm": "hf_bert_python_docs.yaml",
    "hf_unet2d": "hf_unet_digits.yaml",
}
STRATEGY_SETTINGS = {
    "ddp": [],
    "fsdp": ["train.strategy=fsdp"],
    "zero1": DEEPSPEED + ["train.deepspeed.zero_stage=1"],
    "zero2": DEEPSPEED + ["train.deepspeed.zero_stage=2"],
    "zero3": DEEPSPEED + ["train.deepspeed.zero_stage=3"],
    "pipeline": ["train.strategy=pipeline", "train.pipeline.stages=2"],
}
# The built-in families under every strategy; the Hugging Face ones under ddp and fsdp, each ZeRO
# stage in one of them, and pipeline for the language models (refused for the UNet).
HF_CELLS = [
    ("hf_causal_lm", ["ddp", "fsdp", "zero3", "pipeline"]),
    ("hf_masked_lm", ["ddp", "fsdp", "zero1", "pipeline"]),
    ("hf_unet2d", ["ddp", "fsdp", "zero2"]),
]
CELLS = [
    *((family, strategy) for family in FAMILY_JOBS if not family.startswith("hf_")
      for strategy in STRATEGY_SETTINGS),
    *((family, strategy) for family, strategies in HF_CELLS for strategy in strategies),
]  # fmt: skip
STEPS = 10
# Families without batch-dependent layers: every strategy follows one worker's loss trajectory.
EQUIVALENT = ("gpt", "bert", "flow", "hf_causal_lm", "hf_masked_lm", "hf_unet2d")
RESUMED = "gpt"  # its cells stop after the checkpoint at step 5 and resume to STEPS
DDP_LOSSES: dict[str, list[float]] = {}  # each family's ddp cell's, which its fsdp cell follows
# Their fsdp cells recompute each block's activations (train.activation_checkpointing); not the
# GAN's: a recomputed D advances spectral norm's power iteration again, and over 10 steps its
# losses drift 6e-3 from ddp's (test_block_options bounds the drift over 4)
RECOMPUTED_UNDER_FSDP = ("vae", "diffusion", "flow", "bert", "hf_unet2d")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    yield  # launch.run starts the embedded Ray once; every cell of the matrix reuses it
    ray.shutdown()


def _job(family: str, strategy: list[str], tmp_path: Path, *more: str):
    """The family's job at its debug flavor, tracked in tmp_path/mlflow.db."""
    return spec_module.load(
        JOBS / FAMILY_JOBS[family],
        [
            *strategy,
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"storage.path={tmp_path / 'checkpoints'}",
            "model.flavor=debug",
            "data.batch_size=16",
            f"train.max_steps={STEPS}",
            "train.log_every=1",
            f"train.eval_every={STEPS}",
            f"train.checkpoint_every={STEPS}",
            "eval.num_samples=32",
            "eval.num_answers=16",
            "optim.lr=3e-3",
            "optim.schedule=constant",
            "optim.warmup_steps=0",
            *more,
        ],
    )


def _losses(result) -> list[float]:
    client = mlflow.MlflowClient(result.tracking_uri)
    history = sorted(client.get_metric_history(result.run_id, "loss"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(1, STEPS + 1))
    return [m.value for m in history]


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory, new_store):
    """The loss trajectory of one worker with the same global batch and seed, per family: the
    same training loop, run in this process."""
    cache = {}

    def losses(family: str) -> list[float]:
        if family not in cache:
            tmp = tmp_path_factory.mktemp(f"one-{family}")
            new_store(tmp)
            spec = _job(family, ["train.workers=1", _without_sample_scores(family)], tmp)
            uri = tracking.resolve_tracking_uri(spec)
            run_id = tracking.start_run(spec, uri=uri)
            config = {"spec": spec.to_dict(), "run_id": run_id, "tracking_uri": uri, "threads": 2}
            with _torch_threads_kept():
                trainer.train(config, trainer.PlainSession())
            result = launch.RunResult(run_id, spec.experiment, uri, metrics={})
            cache[family] = _losses(result)
        return cache[family]

    return losses


@contextmanager
def _torch_threads_kept():
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_cell(family: str, strategy: str, one_worker, fresh_process, tmp_path: Path) -> None:
    """One cell of the matrix: `family`'s debug flavor trained under `strategy` through
    launch.run (2 gloo workers on the embedded Ray); its loss falls, its run holds what it
    should, and where the family has no batch-dependent layers it follows one worker's loss."""
    settings = STRATEGY_SETTINGS[strategy]
    if strategy != "ddp":  # FID, IS and text quality score samples, whatever trained them: ddp's
        settings = [*settings, _without_sample_scores(family)]  # cell has them
    if strategy == "fsdp" and family in RECOMPUTED_UNDER_FSDP:
        settings = [*settings, "train.activation_checkpointing=true"]
    if family == RESUMED:  # stopped after its checkpoint, then resumed by run id
        half = STEPS // 2
        stopped = launch.run(
            _job(
                family,
                settings,
                tmp_path,
                f"train.max_steps={half}",
                f"train.checkpoint_every={half}",
            )
        )
        result = launch.run(_job(family, settings, tmp_path), resume_run_id=stopped.run_id)
        assert result.run_id == stopped.run_id
    else:
        result = launch.run(_job(family, settings, tmp_path))
    losses = _losses(result)
    assert sum(losses[-3:]) < sum(losses[:3]), losses  # it learns
    if family in EQUIVALENT:
        assert losses == pytest.approx(one_worker(family), rel=1e-4)
    if strategy == "ddp":
        DDP_LOSSES[family] = losses
    elif strategy == "fsdp" and family in DDP_LOSSES:  # batch statistics per rank, as under ddp
        assert losses == pytest.approx(DDP_LOSSES[family], rel=1e-4)
    client = mlflow.MlflowClient(result.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert (
        run.data.tags["gentrain.strategy"]
        == spec_module.load(JOBS / FAMILY_JOBS[family], settings).train.strategy
    )
    assert client.search_logged_models([run.info.experiment_id]), "no model logged"
    # gentrain's workers read their own data: no run starts Ray Train's Ray Datasets actor;
    # a driver's end frees what a run reserved: no run from a driver starts a cleaner for it
    started = {actor["ActorClassName"] for actor in ray._private.state.actors().values()}
    assert not started & {"DatasetManager", "PlacementGroupCleaner"}, started
    if strategy.startswith("zero"):  # every rank saved its own optimizer shard, engine by engine
        shards = {p.name for p in (tmp_path / "checkpoints").rglob("*optim_states.pt")}
        assert shards == {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)}
    if strategy in ("ddp", "fsdp"):  # torch.distributed.checkpoint: every rank wrote its shards
        shards = {p.name for p in (tmp_path / "checkpoints").rglob("*.distcp")}
        assert shards == {"__0_0.distcp", "__1_0.distcp"}, shards
    if strategy == "pipeline":  # each stage saved its own part
        parts = {p.name for p in (tmp_path / "checkpoints").rglob("pipeline_stage*.pt")}
        assert parts == {"pipeline_stage0.pt", "pipeline_stage1.pt"}
    if strategy == "ddp":  # the whole run, end to end
        _check_outputs(family, run, client, tmp_path)
        _check_samples_in_a_fresh_process(family, result, fresh_process)
        if family.startswith("hf_"):
            _check_pretrained_files(family, run, client, tmp_path)


def _without_sample_scores(family: str) -> str:
    metrics = spec_module.load(JOBS / FAMILY_JOBS[family]).eval_metrics
    kept = [m for m in metrics if m not in ("fid", "is", *TEXT_QUALITY)]
    return f"eval.metrics=[{', '.join(kept)}]"


def _check_outputs(family: str, run, client, directory: Path) -> None:
    """Evaluation metrics and samples."""
    job = spec_module.load(JOBS / FAMILY_JOBS[family])
    for metric in job.eval_metrics:
        assert math.isfinite(run.data.metrics[metric]), metric
    if all_families()[family].modality == "image":
        steps = list(sample_grids(client, run.info.run_id))
    else:
        steps = sample_texts(client, run.info.run_id, directory)["step"]
    assert STEPS in steps  # (and step 5's, when stopped there)


def _check_pretrained_files(family: str, run, client, tmp_path: Path) -> None:
    """The run's `pretrained/` artifact loads with the model's own library, as its users load
    such a directory."""
    directory = client.download_artifacts(run.info.run_id, "pretrained", str(tmp_path))
    if family == "hf_unet2d":
        from diffusers import DDIMPipeline

        pipeline = DDIMPipeline.from_pretrained(directory)
        images = pipeline(batch_size=2, num_inference_steps=2, output_type="np").images
        assert images.shape == (2, 8, 8, 1)
        return
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    auto = AutoModelForCausalLM if family == "hf_causal_lm" else AutoModelForMaskedLM
    model = auto.from_pretrained(directory, local_files_only=True)
    logits = model(input_ids=torch.zeros(1, 8, dtype=torch.int64)).logits
    assert logits.shape == (1, 8, model.config.vocab_size) and torch.isfinite(logits).all()


@pytest.fixture(scope="module")
def fresh_process():
    """A process that trained nothing: each ddp cell's final model is loaded there from MLflow
    and sampled. One such process for the whole matrix: each start costs seconds of imports."""
    code = """
import sys, mlflow
for line in sys.stdin:
    uri, run_id = line.split()
    mlflow.set_tracking_uri(uri)
    try:
        print("shape", tuple(mlflow.pytorch.load_model(f"runs:/{run_id}/model").sample(2).shape))
    except Exception as err:
        print("error", repr(err).replace("\\n", " "))
    sys.stdout.flush()
"""
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )

        def sample_shape(result) -> str:
            process.stdin.write(f"{result.tracking_uri} {result.run_id}\n")
            process.stdin.flush()
            while answer := process.stdout.readline():
                if answer.startswith(("shape ", "error ")):  # not whatever a library printed
                    return answer.strip()
            stderr.seek(0)
            raise AssertionError(f"the sampling process ended: {stderr.read()[-2000:]}")

        yield sample_shape
        process.stdin.close()
        process.wait(timeout=60)


def _check_samples_in_a_fresh_process(family: str, result, fresh_process) -> None:
    """The final model, loaded from MLflow and sampled in a process that trained nothing."""
    data = load_dataset(spec_module.load(JOBS / FAMILY_JOBS[family]).data)
    assert fresh_process(result) == f"shape {(2, *data.info.shape)}", family


@pytest.mark.slow
@pytest.mark.parametrize("family, strategy", CELLS)
def test_family_trains_under_strategy(
    family, strategy, one_worker, fresh_process, new_store, tmp_path
):
    new_store(tmp_path)
    train_cell(family, strategy, one_worker, fresh_process, tmp_path)

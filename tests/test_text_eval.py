"""Text quality during training: a GPT answers the questions of a file on S3 at each evaluation,
and MLflow holds each metric (1-5 and raw), MAUVE and the table of answers, worst first; without
a file, held-out windows make the questions."""

import csv
import json
import math

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import JOBS, gentrain, mlflow_table
from gentrain.data.questions import Question, read
from gentrain.data.text import ByteTokenizer, corpus_rows
from gentrain.families import TEXT_QUALITY
from gentrain.metrics.text import TextQuality
from gentrain.metrics.text_quality import sentences
from judge_stand_in import BROKEN, SCORES, JudgeStandIn

pytestmark = pytest.mark.slow
PER_ANSWER = [m for m in TEXT_QUALITY if m != "mauve"]


def _questions(count: int) -> list[dict]:
    """Three sentences of a passage of the built-in corpus as the question and its context, the
    next two as the ground truth."""
    passages = [r for r in corpus_rows("python_docs") if len(sentences(r)) >= 5][:count]
    return [
        {
            "question": " ".join(sentences(p)[:3]),
            "context": " ".join(sentences(p)[:5]),
            "ground_truth": " ".join(sentences(p)[3:5]),
        }
        for p in passages
    ]


def test_a_gpt_run_answers_the_question_file_on_s3_and_logs_every_score(
    tmp_path, s3_server, new_store, monkeypatch
):
    questions = _questions(12)
    client = s3_server.client()
    client.create_bucket(Bucket="gentrain-questions")
    lines = "".join(json.dumps(q) + "\n" for q in questions)
    client.put_object(Bucket="gentrain-questions", Key="qa.jsonl", Body=lines.encode())
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    assert [q.__dict__ for q in read("s3://gentrain-questions/qa.jsonl")] == questions
    new_store(tmp_path)
    done = gentrain(
        "run",
        str(JOBS / "gpt_python_docs.yaml"),
        *("--set", "model.flavor=debug", "--set", "train.workers=1"),
        *("--set", "train.max_steps=20", "--set", "train.eval_every=10"),
        *("--set", "data.batch_size=8", "--set", "eval.num_answers=10"),
        *("--set", "eval.dataset=s3://gentrain-questions/qa.jsonl"),
        *("--set", "eval.decoding.max_new_tokens=24"),
        cwd=tmp_path,
        env=s3_server.env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("gpt-python-docs").experiment_id])[0]
    metrics = run.data.metrics
    final = next(line for line in done.stdout.splitlines() if line.startswith("final: "))
    assert f"similarity {metrics['similarity']:.4g}" in final and "mauve" in final, final
    for metric in PER_ANSWER:
        assert 1 <= metrics[metric] <= 5, metric
        assert math.isfinite(metrics[f"{metric}_raw"]), metric
        steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
        assert sorted(steps) == [10, 20], (metric, steps)
    assert 0 <= metrics["mauve"] <= 1
    table = mlflow_table(client, run.info.run_id, "answers.json", tmp_path)
    assert sorted(table["step"]) == [10] * 10 + [20] * 10
    asked = {q["question"]: q for q in questions[:10]}
    assert set(table["question"]) == set(asked)
    for i, question in enumerate(table["question"]):
        assert table["ground_truth"][i] == asked[question]["ground_truth"]
        assert table["context"][i] == asked[question]["context"]
    for step in (10, 20):  # each evaluation's rows, worst answer first
        rows = [i for i, s in enumerate(table["step"]) if s == step]
        means = [np.mean([table[m][i] for m in PER_ANSWER]) for i in rows]
        assert means == sorted(means)
        assert all(isinstance(table[m][i], int) for m in PER_ANSWER for i in rows)


def test_question_files_read_alike_from_jsonl_csv_and_parquet(tmp_path):
    questions = _questions(4)
    questions[1]["context"] = None  # a row without a context reads as None
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    pq.write_table(pa.Table.from_pylist(questions), tmp_path / "qa.parquet")
    with open(tmp_path / "qa.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["question", "context", "ground_truth"])
        writer.writeheader()
        writer.writerows(questions)
    expected = [Question(**q) for q in questions]
    for name in ("qa.jsonl", "qa.parquet", "qa.csv"):
        assert read(str(tmp_path / name)) == expected, name  # CSV's empty cell: None too
        assert read(str(tmp_path / name), limit=2) == expected[:2]


def test_heldout_windows_make_the_questions_and_the_true_continuation_scores_highest():
    """Without eval.dataset: each window's first half is the question and its context, the
    tokens after it the ground truth. Answering with that truth scores above an untrained-like
    answer (random bytes) on every metric."""
    tokenizer = ByteTokenizer()
    text = "".join(corpus_rows("python_docs"))[:40_000]
    windows = torch.tensor(tokenizer.encode(text)[: 300 * 128]).view(300, 128)
    quality = TextQuality(
        metrics=TEXT_QUALITY,
        heldout=windows,
        encode=tokenizer.encode,
        decode=tokenizer.decode,
        count=24,
        max_new_tokens=48,
    )
    truth = {tuple(w[:64].tolist()): w[64:112] for w in windows[:24]}
    generator = torch.Generator().manual_seed(0)

    def true_answer(prompts: torch.Tensor) -> torch.Tensor:
        return torch.stack([truth[tuple(p.tolist())] for p in prompts])

    def random_answer(prompts: torch.Tensor) -> torch.Tensor:
        return torch.randint(32, 127, (len(prompts), 48), generator=generator)

    found, table = quality.compute(true_answer, device=torch.device("cpu"), step=5)
    noise, _ = quality.compute(random_answer, device=torch.device("cpu"), step=5)
    first = table["question"].index(tokenizer.decode(windows[0, :64].tolist()))
    assert table["context"][first] == table["question"][first]
    assert table["ground_truth"][first] == tokenizer.decode(windows[0, 64:112].tolist())
    assert table["answer"][first] == table["ground_truth"][first]
    assert found["similarity"] == 5 and found["similarity_raw"] == pytest.approx(1, abs=1e-5)
    for metric in PER_ANSWER:
        assert found[metric] > noise[metric], (metric, found[metric], noise[metric])
    assert found["mauve"] > 0.9 > 0.2 > noise["mauve"]


def test_a_masked_lm_fills_the_middle_of_heldout_windows():
    """For bert-like families the question is the window with a span masked (shown as ▯), the
    ground truth the span; the true span scores 5 on similarity, above random bytes."""
    tokenizer = ByteTokenizer()
    text = "".join(corpus_rows("python_docs"))[:40_000]
    windows = torch.tensor(tokenizer.encode(text)[: 200 * 128]).view(200, 128)
    mask = 256
    quality = TextQuality(
        metrics=("similarity", "fluency"),
        heldout=windows,
        encode=tokenizer.encode,
        decode=tokenizer.decode,
        count=16,
        max_new_tokens=16,
        fill_mask=mask,
    )
    masked = [p for p in quality.prompts if p.count(mask) == 16 and p[56:72] == [mask] * 16]
    assert len(masked) == 16

    def true_fill(prompts: torch.Tensor) -> torch.Tensor:
        return torch.stack([windows[quality.prompts.index(p.tolist())][56:72] for p in prompts])

    def random_fill(prompts: torch.Tensor) -> torch.Tensor:
        return torch.randint(32, 127, (len(prompts), 16), generator=torch.Generator())

    found, table = quality.compute(true_fill, device=torch.device("cpu"), step=1)
    noise, _ = quality.compute(random_fill, device=torch.device("cpu"), step=1)
    row = table["ground_truth"].index(tokenizer.decode(windows[0, 56:72].tolist()))
    assert table["question"][row] == (
        f"{tokenizer.decode(windows[0, :56].tolist())}▯{tokenizer.decode(windows[0, 72:].tolist())}"
    )
    assert found["similarity"] == 5 and found["fluency"] > noise["fluency"]
    assert noise["similarity"] < 3


@pytest.fixture
def judge():
    stand_in = JudgeStandIn()
    yield stand_in
    stand_in.close()


def test_a_judge_model_scores_the_answers_through_mlflow_judges(tmp_path, new_store, judge):
    """eval.judge: MLflow's judges ask the model (a stand-in OpenAI server on 127.0.0.1) with
    each metric's definition; its 1-5 ratings are the run's metrics and the table's scores; the
    API key goes to the server from the environment and nowhere else; a metric the judge does
    not rate is said, not invented."""
    key = "sk-stand-in-secret-7f3a"
    questions = _questions(6)
    with open(tmp_path / "qa.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["question", "context", "ground_truth"])
        writer.writeheader()
        writer.writerows(questions)
    new_store(tmp_path)
    done = gentrain(
        "run",
        str(JOBS / "gpt_python_docs.yaml"),
        *("--set", "model.flavor=debug", "--set", "train.workers=1"),
        *("--set", "train.max_steps=10", "--set", "train.eval_every=10"),
        *("--set", "data.batch_size=8", "--set", "eval.num_answers=6"),
        *("--set", "eval.dataset=qa.csv", "--set", "eval.judge=openai:/stand-in"),
        *("--set", "eval.decoding.max_new_tokens=16"),
        *("--set", "eval.metrics=[similarity,relevance,coherence,fluency,groundedness,mauve]"),
        cwd=tmp_path,
        env={"OPENAI_API_KEY": key, "OPENAI_API_BASE": judge.url},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(judge.requests) == 5 * 6
    assert {r["path"] for r in judge.requests} == {"/v1/chat/completions"}
    assert {r["authorization"] for r in judge.requests} == {f"Bearer {key}"}
    asked = "".join(r["messages"][1]["content"] for r in judge.requests)
    for q in questions:  # each question and truth reached the judge, as JSON strings
        for text in (q["question"], q["ground_truth"]):
            assert json.dumps(text[:40])[1:-1] in asked, text
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("gpt-python-docs").experiment_id])[0]
    for definition, rating in SCORES.items():
        assert run.data.metrics[definition.lower()] == rating
        assert f"{definition.lower()}_raw" not in run.data.metrics  # a judge gives no raw value
    assert BROKEN.lower() not in run.data.metrics
    assert run.data.metrics["judge_failures"] == 6
    assert 0 <= run.data.metrics["mauve"] <= 1  # embeddings, judge or not
    said = done.stdout + done.stderr
    assert "eval.judge openai:/stand-in gave no score for 6 answer-metric pairs at step 10" in said
    table = mlflow_table(client, run.info.run_id, "answers.json", tmp_path)
    assert set(table["similarity"]) == {5} and set(table["fluency"]) == {None}
    logged = json.dumps([run.data.params, run.data.tags]) + said
    assert key not in logged

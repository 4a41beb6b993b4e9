"""The outbox rank 0 logs through, against a real MLflow store: everything put reaches the run in
order, an empty entry holds nothing back, and a store that never answers leaves it all kept."""

import mlflow
from PIL import Image

from conftest import free_port, sample_grids, sample_texts
from gentrain.tracking import outbox


def _run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("outbox")).info.run_id
    return uri, client, run_id


def test_what_is_put_reaches_the_run_and_the_outbox_goes(tmp_path):
    uri, client, run_id = _run(tmp_path)
    box = outbox.Outbox(tmp_path / "box", uri=uri, run_id=run_id, warn=print)
    for step in range(1, 4):
        box.put({"metrics": [["loss", 1.0 / step, 0, step]]})
    box.put({"metrics": []})
    box.put({"tag": ["gentrain.note", "hello"]})
    (tmp_path / "step_3.txt").write_text("a sample")
    box.put_file(tmp_path / "step_3.txt", "samples")
    Image.new("RGB", (8, 8), "red").save(tmp_path / "grid.png")
    box.put_image(tmp_path / "grid.png", key="samples", step=3)
    box.put({"table": {"step": [3], "model": ["a text"]}, "path": "samples.json"})
    assert box.close(timeout=60)
    assert not (tmp_path / "box").exists()
    history = client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    assert client.get_run(run_id).data.tags["gentrain.note"] == "hello"
    assert [a.path for a in client.list_artifacts(run_id, "samples")] == ["samples/step_3.txt"]
    assert list(sample_grids(client, run_id)) == [3]
    assert sample_texts(client, run_id, tmp_path) == {"step": [3], "model": ["a text"]}


def test_a_store_that_never_answers_leaves_everything_kept(tmp_path):
    _, _, run_id = _run(tmp_path)
    away = f"http://127.0.0.1:{free_port()}"
    warnings = []
    box = outbox.Outbox(tmp_path / "box", uri=away, run_id=run_id, warn=warnings.append)
    box.put({"metrics": [["loss", 1.0, 0, 1]]})
    box.put({"tag": ["gentrain.note", "hello"]})
    assert not box.close(timeout=3)
    assert (tmp_path / "box" / outbox.KEPT).exists()
    assert [entry for _, entry in outbox.unsent(tmp_path / "box")] == [
        {"metrics": [["loss", 1.0, 0, 1]]},
        {"tag": ["gentrain.note", "hello"]},
    ]
    assert warnings and f"tracking store {away} is not answering" in warnings[0]

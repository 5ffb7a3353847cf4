"""Experiment trackers as config choices, several at once, offline: each leaves logs its own reader
opens, with the metrics, the rollout samples as a table and (where supported) D-score histograms."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import ROOT, train
from hydra import compose, initialize_config_dir

AVAILABLE = [
    name
    for name, package in (("tensorboard", "tensorboard"), ("wandb", "wandb"), ("mlflow", "mlflow"))
    if importlib.util.find_spec(package) is not None
]


def needs(package: str):
    return pytest.mark.skipif(
        package not in AVAILABLE, reason=f"{package} is not installed (pip install -e '.[trackers]')"
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One toy run logging to the CSV log and every installed tracker at once (samples every 2 steps)."""
    log_dir = tmp_path_factory.mktemp("logs")
    return train(log_dir, f"logger=[{','.join(['csv', *AVAILABLE])}]", "callbacks.rollout_samples.every_n_steps=2")


def test_logger_many_combines_csv_and_tensorboard():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["logger=many"])
    assert {k: v._target_ for k, v in cfg.logger.items()} == {
        "csv": "lightning.pytorch.loggers.CSVLogger",
        "tensorboard": "lightning.pytorch.loggers.TensorBoardLogger",
    }


def test_csv_log_is_still_written(run):
    assert "train/d_acc" in (run / "metrics.csv").read_text().splitlines()[0]


@needs("tensorboard")
def test_tensorboard_event_files_hold_metrics_samples_and_histograms(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"histograms": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/d_acc", "train/reward_mean", "train/kl"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/d_acc")] == [0, 1, 2, 3, 4, 5]  # method steps 1..6
    assert {"rollouts/d_score_teacher", "rollouts/d_score_student"} <= set(tags["histograms"])
    student = events.Histograms("rollouts/d_score_student")
    assert [e.step for e in student] == [1, 3, 5]  # method steps 2, 4, 6
    assert student[0].histogram_value.num == 4 * 2  # every prompt's samples: batch 4 x 2 samples
    text = events.Tensors("rollouts/samples/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.startswith("| step | phase | id | prompt | response | role | D score | length |")


@needs("wandb")
def test_wandb_offline_run_holds_metrics_tables_and_histograms(run):
    (offline,) = (run / "wandb").glob("offline-run-*")
    log = next(offline.glob("*.wandb")).read_bytes()  # wandb's record log (protobuf): the keys appear verbatim
    for key in (b"train/d_acc", b"val/nll", b"rollouts/d_score_student", b"rollouts/samples"):
        assert key in log, key
    tables = sorted((offline / "files" / "media" / "table" / "rollouts").glob("samples_*.table.json"))
    assert len(tables) == 3
    table = json.loads(tables[-1].read_text())
    assert table["columns"] == ["step", "phase", "id", "prompt", "response", "role", "D score", "length"]
    assert [row[5] for row in table["data"][:3]] == ["teacher", "student", "student"]


@needs("mlflow")
def test_mlflow_file_store_holds_metrics_and_sample_tables(run, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 opens its file store only when asked

    client = MlflowClient(f"file:{run}/mlruns")
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("gad").experiment_id])
    history = client.get_metric_history(mlflow_run.info.run_id, "train/d_acc")
    assert sorted(m.step for m in history) == [0, 1, 2, 3, 4, 5]
    artifacts = [a.path for a in client.list_artifacts(mlflow_run.info.run_id, "rollouts")]
    assert artifacts == ["rollouts/step_000001.json", "rollouts/step_000003.json", "rollouts/step_000005.json"]
    path = client.download_artifacts(mlflow_run.info.run_id, "rollouts/step_000005.json", str(tmp_path))
    table = json.loads(open(path).read())
    assert table["columns"][:2] == ["step", "phase"] and table["data"][0][1] == "adversarial"

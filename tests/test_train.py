"""train.py end to end on tiny MNIST files (the real idx format) in tmp_path."""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dataset_files import write_cifar, write_mnist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train  # noqa: E402
from custom_conv.training.checkpoints import atomic_save  # noqa: E402
from custom_conv.training.config import default_logdir  # noqa: E402

# Small enough to take seconds, big enough for several batches per epoch.
TINY = ["--batch-size", "16", "--no-download", "--workers", "0", "--threads", "1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_mnist(root, n_train=96, n_test=40)
    return root


def run_cli(args, cwd, timeout=180, launcher=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = (launcher or [sys.executable]) + [str(ROOT / "train.py")] + args
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cli_run(data_dir, tmp_path_factory):
    """`python train.py` as a user runs it: two short epochs (of 3 steps; step scalars every 2)."""
    run_dir = tmp_path_factory.mktemp("runs") / "smoke"
    result = run_cli(["--data-dir", str(data_dir), "--logdir", str(run_dir), "--epochs", "2",
                      "--limit-batches", "3", "--log-every", "2"] + TINY, cwd=run_dir.parent)
    assert result.returncode == 0, result.stderr
    return run_dir, result


def test_cli_prints_one_summary_line_per_epoch(cli_run):
    _, result = cli_run
    summaries = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert len(summaries) == 2
    for line in summaries:
        assert "loss" in line and "acc" in line and "img/s" in line
    assert "\r" not in result.stdout + result.stderr  # no progress bar when not on a terminal


def test_metrics_json(cli_run):
    run_dir, _ = cli_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["test_acc"] <= 1.0 and metrics["finished"]
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]
    for row in metrics["history"]:
        assert row["epoch_time_s"] > 0 and row["images_per_s"] > 0
        assert row["train_images"] == 3 * 16 and 0 <= row["train_acc"] <= 1 and row["train_loss"] > 0
    assert metrics["test_acc"] == metrics["history"][-1]["test_acc"]
    assert metrics["config"]["backend"] == "custom" and metrics["config"]["model"] == "lenet5"


def test_checkpoint_holds_everything_to_continue(cli_run):
    run_dir, _ = cli_run
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 2
    for key in ("model", "optimizer", "scheduler", "scaler", "rng", "args", "history"):
        assert key in ckpt
    assert set(ckpt["rng"][0]) >= {"python", "numpy", "torch", "sampler"}
    assert (run_dir / "best.pt").exists()
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_tensorboard_events_read_back(cli_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = cli_run
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("loss/train", "loss/test", "accuracy/train", "accuracy/test", "learning_rate",
                "throughput/train_images_per_s"):
        assert [e.step for e in events.Scalars(tag)] == [1, 2], tag
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert events.Scalars("accuracy/test")[-1].value == pytest.approx(metrics["test_acc"])
    for name in ("features.0", "features.3"):
        assert f"weights/{name}" in tags["histograms"] and f"gradients/{name}" in tags["histograms"]
    assert {"filters/first_conv", "feature_maps/features.0", "feature_maps/features.3",
            "feature_maps/input"} <= set(tags["images"])
    # 6 first-layer filters of 5x5, shown 8x larger in one row of the grid.
    assert events.Images("filters/first_conv")[-1].width >= 6 * 40
    hparams = events.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in hparams and "_hparams_/session_start_info" in hparams
    assert b"lenet5" in hparams["_hparams_/session_start_info"]
    assert [e.value for e in events.Scalars("hparam/test_acc")] == [pytest.approx(metrics["test_acc"])]


def test_tensorboard_has_the_graph_step_scalars_and_the_tests_classes(cli_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, result = cli_run
    assert "TracerWarning" not in result.stderr and "graph" not in result.stdout  # traced quietly
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert "custom_conv::conv2d_forward" in {node.op for node in events.Graph().node}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    per_class = metrics["test_acc_per_class"]
    tags = events.Tags()
    assert [e.step for e in events.Images("confusion_matrix/test")] == [1, 2]
    for name, acc in per_class.items():
        if acc is not None:
            assert events.Scalars(f"accuracy_per_class/{name}")[-1].value == pytest.approx(acc), name
    assert {t for t in tags["scalars"] if t.startswith("accuracy_per_class/")} == {
        f"accuracy_per_class/{name}" for name, acc in per_class.items() if acc is not None}
    # 3 steps an epoch, scalars every 2 steps of the run: steps 2, 4 and 6, in their own run directory.
    steps = EventAccumulator(str(run_dir / "steps"))
    steps.Reload()
    assert [e.step for e in steps.Scalars("train_step/loss")] == [2, 4, 6]
    lrs = [row["lr"] for row in metrics["history"]]
    assert [e.value for e in steps.Scalars("train_step/learning_rate")] == pytest.approx([lrs[0], lrs[1], lrs[1]])


def test_metrics_json_keeps_the_final_models_per_class_accuracy_and_confusion_matrix(cli_run):
    run_dir, _ = cli_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    matrix = metrics["test_confusion_matrix"]
    counts, classes = matrix["counts"], matrix["classes"]
    assert classes == list(metrics["test_acc_per_class"]) and len(classes) == 10 and classes[0] == "0 - zero"
    assert sum(map(sum, counts)) == metrics["history"][-1]["test_images"] == 40
    assert sum(counts[i][i] for i in range(10)) / 40 == pytest.approx(metrics["test_acc"])
    for i, name in enumerate(classes):
        if sum(counts[i]):
            assert metrics["test_acc_per_class"][name] == pytest.approx(counts[i][i] / sum(counts[i]))


def test_off_a_terminal_progress_lines_come_before_the_epoch_ends(data_dir, tmp_path):
    result = run_cli(["--data-dir", str(data_dir), "--logdir", str(tmp_path / "run"), "--epochs", "1",
                      "--limit-batches", "3", "--progress-every", "0"] + TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    end_of_epoch = next(i for i, line in enumerate(lines) if line.startswith("epoch "))
    before = lines[:end_of_epoch]
    for step in (1, 2, 3):
        assert any(re.fullmatch(rf"  epoch 1/1  step {step}/3  loss \d+\.\d{{4}}  [\d,]+ img/s  ETA \d+:\d\d", line)
                   for line in before), (step, before)
    assert any(re.fullmatch(r"  test  batch 1/1  loss \d+\.\d{4}  [\d,]+ img/s  ETA \d+:\d\d", line) for line in before)
    assert "\r" not in result.stdout + result.stderr


def test_resume_keeps_the_runs_data_directory(tmp_path, monkeypatch):
    write_mnist(tmp_path / "first" / "data", n_train=32, n_test=16, folder="FashionMNIST")
    monkeypatch.chdir(tmp_path / "first")
    train.main(["--dataset", "fashion-mnist", "--data-dir", "data", "--epochs", "2", "--stop-after", "1",
                "--logdir", str(tmp_path / "run")] + TINY)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # where ./data has nothing
    resumed = train.main(["--resume", str(tmp_path / "run"), "--no-download", "--threads", "1"])
    assert resumed["finished"]
    where = tmp_path / "first" / "data" / "FashionMNIST" / "raw"
    assert resumed["config"]["dataset_source"] == f"FashionMNIST from {where}"
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_extending_a_finished_constant_run_gives_the_weights_of_asking_for_the_total_at_once(data_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    common = ["--data-dir", str(data_dir), "--limit-batches", "3", "--schedule", "constant", "--log-every", "1"] + TINY
    whole = train.main(common + ["--epochs", "3", "--logdir", str(tmp_path / "whole")])
    short = train.main(common + ["--epochs", "2", "--logdir", str(tmp_path / "extended")])
    assert short["finished"] and short["epochs_done"] == 2
    extended = train.main(["--resume", str(tmp_path / "extended"), "--epochs", "3", "--threads", "1"])
    assert extended["finished"] and [r["epoch"] for r in extended["history"]] == [1, 2, 3]
    assert extended["config"]["epochs"] == 3
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "extended" / "checkpoint.pt", weights_only=False)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for field in ("train_loss", "test_loss", "test_acc", "lr"):
        assert [r[field] for r in whole["history"]] == [r[field] for r in extended["history"]], field
    # The per-step scalars go on where the finished run stopped, each step once.
    steps = {}
    for name in ("whole", "extended"):
        events = EventAccumulator(str(tmp_path / name / "steps"))
        events.Reload()
        steps[name] = [(e.step, e.value) for e in events.Scalars("train_step/loss")]
    assert [s for s, _ in steps["extended"]] == list(range(1, 10)) and steps["extended"] == steps["whole"]


def test_extending_a_finished_cosine_run_recomputes_the_schedule_over_the_new_total(data_dir, tmp_path, capsys):
    common = ["--data-dir", str(data_dir), "--limit-batches", "1", "--lr", "0.05"] + TINY
    train.main(common + ["--epochs", "2", "--logdir", str(tmp_path)])
    with pytest.raises(SystemExit, match="may only be raised"):
        train.main(["--resume", str(tmp_path), "--epochs", "1"])
    capsys.readouterr()
    extended = train.main(["--resume", str(tmp_path), "--epochs", "3", "--threads", "1"])
    assert "the cosine schedule is recomputed over 3 epochs; epoch 3 trains at lr 0.0125" in capsys.readouterr().out
    # Epochs 1-2 followed the 2-epoch cosine (0.05, then half); epoch 3 is where a 3-epoch cosine is at 2/3.
    assert [r["lr"] for r in extended["history"]] == pytest.approx(
        [0.05, 0.025, 0.05 * 0.5 * (1 + math.cos(2 * math.pi / 3))])
    again = train.main(["--resume", str(tmp_path), "--threads", "1"])
    assert again["epochs_done"] == 3 and "has finished its 3 epochs already" in capsys.readouterr().out


def test_eval_only_tests_the_whole_test_set_unless_limited(tmp_path):
    # More test images than one test batch (256), so that --limit-batches 1 leaves some out.
    write_mnist(tmp_path / "data", n_train=32, n_test=300)
    metrics = train.main(["--data-dir", str(tmp_path / "data"), "--epochs", "1", "--limit-batches", "1",
                          "--logdir", str(tmp_path / "run")] + TINY)
    assert metrics["history"][0]["test_images"] == 256
    whole = train.main(["--resume", str(tmp_path / "run"), "--eval-only", "--threads", "1"])
    assert whole["test_images"] == 300 and sum(map(sum, whole["test_confusion_matrix"]["counts"])) == 300
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["test_images"] == 300
    limited = train.main(["--resume", str(tmp_path / "run"), "--eval-only", "--limit-batches", "1", "--threads", "1"])
    assert limited["test_images"] == 256


def test_resume_ends_with_bitwise_the_same_weights(data_dir, tmp_path):
    # Augmentation on, so the restored RNG states matter as well as the data order.
    common = ["--data-dir", str(data_dir), "--epochs", "3", "--limit-batches", "4"] + TINY
    whole = train.main(common + ["--logdir", str(tmp_path / "whole")])
    first = train.main(common + ["--logdir", str(tmp_path / "split"), "--stop-after", "1"])
    assert first["epochs_done"] == 1 and not first["finished"]
    torch.manual_seed(1234)  # whatever the process did meanwhile must not matter
    resumed = train.main(["--resume", str(tmp_path / "split"), "--data-dir", str(data_dir), "--threads", "1"])
    assert resumed["finished"] and [r["epoch"] for r in resumed["history"]] == [1, 2, 3]
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for (_, sa), (_, sb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    for field in ("train_loss", "test_loss", "test_acc", "lr"):
        assert [r[field] for r in whole["history"]] == [r[field] for r in resumed["history"]], field
    # Both halves wrote to one TensorBoard run, each epoch once.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "split"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss/train")] == [1, 2, 3]


def test_resume_refuses_to_change_hyperparameters(data_dir, tmp_path):
    train.main(["--data-dir", str(data_dir), "--epochs", "2", "--limit-batches", "1", "--stop-after", "1",
                "--logdir", str(tmp_path)] + TINY)
    with pytest.raises(SystemExit, match="--lr 0.1"):
        train.main(["--resume", str(tmp_path), "--lr", "0.1", "--data-dir", str(data_dir)])


def test_eval_only_reproduces_the_checkpoints_test_accuracy(data_dir, tmp_path):
    metrics = train.main(["--data-dir", str(data_dir), "--epochs", "1", "--logdir", str(tmp_path),
                          "--backend", "torch"] + TINY)
    result = train.main(["--resume", str(tmp_path / "checkpoint.pt"), "--eval-only", "--data-dir", str(data_dir)])
    assert result["test_acc"] == metrics["test_acc"] and result["test_images"] == 40
    assert json.loads((tmp_path / "eval.json").read_text())["test_acc"] == metrics["test_acc"]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.pt"
    atomic_save({"epoch": 1}, target)

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"epoch": 2}, target)
    assert torch.load(target)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_amp_runs_on_cpu(data_dir, tmp_path):
    metrics = train.main(["--data-dir", str(data_dir), "--epochs", "1", "--limit-batches", "2", "--amp",
                          "--logdir", str(tmp_path)] + TINY)
    assert 0.0 <= metrics["test_acc"] <= 1.0 and metrics["config"]["amp"]


def test_missing_dataset_stops_with_a_clear_message(tmp_path):
    with pytest.raises(SystemExit, match="cifar-10-batches-py"):
        train.main(["--dataset", "cifar10", "--data-dir", str(tmp_path), "--no-download",
                    "--logdir", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_torchrun_two_cpu_processes(data_dir, tmp_path):
    run_dir = tmp_path / "ddp"
    result = run_cli(["--data-dir", str(data_dir), "--logdir", str(run_dir), "--epochs", "2",
                      "--stop-after", "1", "--batch-size", "8", "--device", "cpu", "--no-download",
                      "--threads", "1"],
                     cwd=tmp_path, launcher=[sys.executable, "-m", "torch.distributed.run", "--standalone",
                                             "--nproc_per_node=2"], timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    # Only rank 0 logs and writes.
    assert len([line for line in result.stdout.splitlines() if line.startswith("epoch ")]) == 1
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["config"]["world_size"] == 2
    # Sharded: the two processes together see each image once per epoch
    # (96 training images, 6 batches of 8 each); every test image is counted once.
    assert metrics["history"][0]["train_images"] == 96 and metrics["history"][0]["test_images"] == 40
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert len(ckpt["rng"]) == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])


@pytest.mark.parametrize("model", ["resnet20", "vgg11_bn"])
def test_cifar_models_train_on_cifar_files(tmp_path, monkeypatch, model):
    write_cifar(tmp_path, monkeypatch, per_batch=4, n_test=4)
    metrics = train.main(["--model", model, "--dataset", "cifar10", "--data-dir", str(tmp_path), "--epochs", "1",
                          "--batch-size", "4", "--limit-batches", "2", "--logdir", str(tmp_path / "run"),
                          "--no-download", "--threads", "1"])
    assert metrics["config"]["dataset_source"].startswith("CIFAR10 from")
    assert metrics["history"][0]["train_images"] == 8 and metrics["history"][0]["test_images"] == 4
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"images": 0})
    events.Reload()
    assert "filters/first_conv" in events.Tags()["images"]  # 3-channel filters shown in colour


def test_default_run_directory_is_readable_and_never_reused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args, _ = train.parse_args(["--model", "resnet20", "--dataset", "cifar10", "--backend", "torch"])
    first = Path(default_logdir(args))
    assert first.parent == Path("runs") and first.name.startswith("resnet20-cifar10-torch-")
    first.mkdir(parents=True)
    second = Path(default_logdir(args))
    assert second != first and not second.exists()


def test_pool_avg_trains_lenet5_with_average_pooling_and_is_refused_for_other_models(data_dir, tmp_path):
    run_dir = tmp_path / "avg"
    result = run_cli(["--data-dir", str(data_dir), "--logdir", str(run_dir), "--epochs", "1", "--limit-batches", "2",
                      "--pool", "avg"] + TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["config"]["pool"] == "avg"
    with pytest.raises(SystemExit):
        train.parse_args(["--model", "resnet20", "--pool", "avg"])


def test_resume_of_a_checkpoint_from_before_pool_existed_takes_max_pooling(data_dir, tmp_path):
    metrics = train.main(["--data-dir", str(data_dir), "--epochs", "1", "--logdir", str(tmp_path)] + TINY)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    del ckpt["args"]["pool"]
    atomic_save(ckpt, tmp_path / "checkpoint.pt")
    result = train.main(["--resume", str(tmp_path), "--eval-only", "--data-dir", str(data_dir)])
    assert result["test_acc"] == metrics["test_acc"]
    with pytest.raises(SystemExit, match="--pool avg"):
        train.main(["--resume", str(tmp_path), "--pool", "avg", "--data-dir", str(data_dir)])

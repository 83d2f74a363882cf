"""custom_conv.training one module at a time, on tiny data (tests/test_train.py runs them together)."""
import io
import math
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from custom_conv.training import (checkpoints, config, distributed, loaders, loop, metrics, models, progress,
                                  tensorboard)
from dataset_files import write_mnist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train  # noqa: E402


@pytest.fixture
def alone(monkeypatch):
    """A lone process, whatever launched pytest."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    return distributed.Dist()


def options(**overrides):
    """Parsed defaults, as train.py would pass them, with `overrides`."""
    args, _ = train.parse_args([])
    vars(args).update(overrides)
    return args


def test_parser_defaults_and_what_was_given():
    args, given = train.parse_args([])
    assert given == set() and vars(args) == config.DEFAULTS
    assert (args.model, args.dataset, args.backend, args.device) == ("lenet5", "mnist", "custom", "auto")
    assert (args.epochs, args.batch_size, args.lr, args.optimizer, args.momentum, args.weight_decay,
            args.schedule, args.seed, args.workers) == (10, 64, 0.05, "sgd", 0.9, 5e-4, "cosine", 0, 0)
    assert args.augment and args.download and not args.amp and args.logdir is None
    args, given = train.parse_args(["--lr", "0.1", "--no-augment", "--batch-size", "8"])
    assert given == {"lr", "augment", "batch_size"} and (args.lr, args.augment, args.batch_size) == (0.1, False, 8)
    assert "peak learning rate (default 0.05)" in train.build_parser().format_help()


def test_dist_alone_is_the_identity(alone):
    assert not alone.enabled and alone.main and alone.world_size == 1
    assert alone.sum(1.5, 2, 3, device=torch.device("cpu")) == [1.5, 2.0, 3.0]
    assert alone.gather({"a": 1}) == [{"a": 1}]
    model = torch.nn.Linear(2, 2)
    assert alone.wrap(model, torch.device("cpu")) is model
    assert distributed.pick_device("cpu", "custom", alone) == torch.device("cpu")


def test_dist_reads_its_rank_from_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    ddp = distributed.Dist()
    assert ddp.enabled and not ddp.main and (ddp.world_size, ddp.rank, ddp.local_rank) == (4, 2, 0)


def test_loaders_batch_and_repeat_their_order(tmp_path, alone):
    write_mnist(tmp_path, n_train=40, n_test=20)
    args = options(data_dir=str(tmp_path), download=False, augment=False, batch_size=16)
    train_set, test_set, info = loaders.load_data(args, alone, log=pytest.fail)
    assert (len(train_set), len(test_set), info["num_classes"]) == (40, 20, 10)

    def first_epoch_labels(seed):
        generator = torch.Generator()
        generator.manual_seed(seed)
        made = loaders.make_loaders(train_set, test_set, args, alone, torch.device("cpu"), generator)
        assert made.sampler is None and [len(y) for _, y in made.test] == [20]  # test batches: >= 256
        return [y.tolist() for _, y in made.train]

    batches = first_epoch_labels(0)
    assert [len(b) for b in batches] == [16, 16, 8]
    assert first_epoch_labels(0) == batches and first_epoch_labels(1) != batches
    assert sorted(sum(batches, [])) == sorted(train_set.targets.tolist())


def test_models_optimizer_and_schedules():
    info = {"in_channels": 1, "num_classes": 10}
    model = models.build_model(options(backend="torch"), info, torch.device("cpu"))
    assert models.count_parameters(model) == 61_706
    copy = models.build_model(options(backend="torch"), info, torch.device("cpu"), {"model": model.state_dict()})
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), copy.state_dict().values()))

    def lrs(schedule, epochs=8):
        args = options(schedule=schedule, epochs=epochs, lr=1.0)
        optimizer = models.make_optimizer(args, torch.nn.Linear(1, 1).parameters())
        scheduler = models.make_scheduler(args, optimizer)
        out = []
        for _ in range(epochs):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return out + [optimizer.param_groups[0]["lr"]]

    assert lrs("step") == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01, 0.01])
    assert lrs("constant") == [1.0] * 9
    cosine = lrs("cosine")
    assert cosine[0] == 1.0 and cosine[4] == pytest.approx(0.5) and cosine[-1] == pytest.approx(0, abs=1e-12)
    sgd = models.make_optimizer(options(), torch.nn.Linear(1, 1).parameters())
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["weight_decay"] == 5e-4


def test_train_epoch_lowers_the_loss_and_counts_images(alone):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 2, generator=g)  # the last batch of 8 is short
    data = DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=8)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    args, cpu = SimpleNamespace(epochs=5, amp=False, limit_batches=None), torch.device("cpu")
    scaler = models.make_scaler(args, cpu)
    results = [loop.train_epoch(model, data, optimizer, scaler, cpu, args, alone, e) for e in range(1, 6)]
    assert [r["images"] for r in results] == [60] * 5
    assert results[-1]["loss"] < results[0]["loss"] / 2 and results[-1]["acc"] > 0.9
    assert results[0]["images_per_s"] > 0 and results[0]["time_s"] > 0
    args.limit_batches = 3
    assert loop.train_epoch(model, data, optimizer, scaler, cpu, args, alone, 6)["images"] == 24


def test_evaluate_on_known_logits(alone):
    # The model passes its input through, so each row is the logits.
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 5.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0, 0])  # right, right, wrong, wrong, right
    data = DataLoader(TensorDataset(logits, labels), batch_size=2)
    args, cpu = SimpleNamespace(amp=False, limit_batches=None), torch.device("cpu")
    result = loop.evaluate(torch.nn.Identity(), data, cpu, args, alone)
    expected = sum(math.log1p(math.exp(d)) for d in (-2, -1, 3, 5, -1)) / 5
    assert result["acc"] == 3 / 5 and result["images"] == 5 and result["loss"] == pytest.approx(expected)
    # Rows: true class; columns: predicted. Class 0: right, wrong, right; class 1: right, wrong.
    assert result["confusion"] == [[2, 1], [1, 1]]
    one_way = DataLoader(TensorDataset(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1, 1])))
    assert loop.evaluate(torch.nn.Identity(), one_way, cpu, args, alone)["confusion"] == [[1, 0], [1, 1]]
    args.limit_batches = 1  # the first two rows
    assert loop.evaluate(torch.nn.Identity(), data, cpu, args, alone) == {
        "loss": pytest.approx((math.log1p(math.exp(-2)) + math.log1p(math.exp(-1))) / 2), "acc": 1.0, "images": 2,
        "confusion": [[1, 0], [0, 1]]}


def test_checkpoint_round_trip_restores_training_and_random_state(tmp_path, alone):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    generator = torch.Generator().manual_seed(7)
    checkpoints.seed_everything(3)
    state = checkpoints.checkpoint_state(model, optimizer, scheduler, scaler, epoch=4, args={"lr": 0.1},
                                         history=[{"epoch": 4}], best_test_acc=0.5,
                                         rng=[checkpoints.rng_state(generator)])
    checkpoints.atomic_save(state, tmp_path / checkpoints.CHECKPOINT)
    assert [p.name for p in tmp_path.iterdir()] == [checkpoints.CHECKPOINT]

    def draws():
        return (random.random(), np.random.rand(), torch.rand(2).tolist(), torch.rand(2, generator=generator).tolist())

    expected = draws()
    checkpoints.seed_everything(99)  # whatever ran meanwhile
    generator.manual_seed(99)
    ckpt = torch.load(tmp_path / checkpoints.CHECKPOINT, weights_only=False)
    optimizer2 = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler2 = torch.optim.lr_scheduler.StepLR(optimizer2, 1)
    done = checkpoints.restore(ckpt, optimizer2, scheduler2, scaler, generator, alone, log=pytest.fail)
    assert done == (4, [{"epoch": 4}], 0.5)
    assert draws() == expected
    assert scheduler2.last_epoch == 1 and optimizer2.param_groups[0]["lr"] == pytest.approx(0.01)
    buffers = [optimizer2.state[p]["momentum_buffer"] for p in model.parameters()]
    assert all(torch.equal(a, optimizer.state[p]["momentum_buffer"]) for a, p in zip(buffers, model.parameters()))


def test_resume_adopts_the_checkpoints_hyperparameters_and_settings(tmp_path):
    saved = config.hparams(options(lr=0.2, epochs=3, seed=5, limit_batches=2))
    saved |= config.settings(options(data_dir=str(tmp_path / "data"), target_acc=97.5, log_every=7))
    checkpoints.atomic_save({"args": saved}, tmp_path / checkpoints.CHECKPOINT)
    args, given = train.parse_args(["--resume", str(tmp_path), "--workers", "2"])
    checkpoints.resolve_resume(args, given)
    assert config.hparams(args) == config.hparams(SimpleNamespace(**saved))
    assert (args.data_dir, args.target_acc, args.log_every) == (str(tmp_path / "data"), 97.5, 7)
    assert args.logdir == str(tmp_path) and args.workers == 2
    # Settings given again win; hyper-parameters given again are refused, except a larger --epochs.
    args, given = train.parse_args(["--resume", str(tmp_path), "--data-dir", "elsewhere", "--epochs", "5"])
    checkpoints.resolve_resume(args, given)
    assert (args.data_dir, args.epochs, args.lr) == ("elsewhere", 5, 0.2)
    args, given = train.parse_args(["--resume", str(tmp_path), "--epochs", "2"])
    with pytest.raises(SystemExit, match=r"may only be raised.*--epochs 2 \(checkpoint: 3\)"):
        checkpoints.resolve_resume(args, given)
    args, given = train.parse_args(["--resume", str(tmp_path), "--seed", "6", "--epochs", "5"])
    with pytest.raises(SystemExit, match=r"hyper-parameters; remove --seed 6 \(checkpoint: 5\)$"):
        checkpoints.resolve_resume(args, given)


def test_eval_only_does_not_adopt_the_runs_batch_limit(tmp_path):
    checkpoints.atomic_save({"args": config.hparams(options(limit_batches=2))}, tmp_path / checkpoints.CHECKPOINT)
    args, given = train.parse_args(["--resume", str(tmp_path), "--eval-only"])
    checkpoints.resolve_resume(args, given)
    assert args.limit_batches is None
    args, given = train.parse_args(["--resume", str(tmp_path), "--eval-only", "--limit-batches", "5"])
    checkpoints.resolve_resume(args, given)
    assert args.limit_batches == 5
    args, given = train.parse_args(["--resume", str(tmp_path)])
    checkpoints.resolve_resume(args, given)
    assert args.limit_batches == 2  # training on keeps it: it decides the weights


def test_metrics_rows_lines_and_summary():
    train_result = {"loss": 0.5, "acc": 0.75, "images": 64, "time_s": 2.0, "images_per_s": 32.0}
    rows = [metrics.epoch_row(e, train_result, {"loss": 0.25, "acc": a, "images": 10}, 0.1)
            for e, a in ((1, 0.6), (2, 0.8))]
    assert metrics.epoch_line(rows[1], 3) == ("epoch   2/3  train loss 0.5000 acc  75.00%  test loss 0.2500 acc"
                                              "  80.00%  lr 0.1  32 img/s  2.0 s")
    final = metrics.final_metrics(rows, 0.8, 3, {"model": "lenet5"})
    assert list(final) == ["test_acc", "test_loss", "best_test_acc", "epochs_done", "finished",
                           "total_train_time_s", "epochs_to_target", "time_to_target_s", "config", "history"]
    assert (final["epochs_to_target"], final["time_to_target_s"]) == (None, None)  # no target in this config
    assert (final["test_acc"], final["epochs_done"], final["finished"]) == (0.8, 2, False)
    assert final["total_train_time_s"] == 4.0 and final["history"] is rows
    assert metrics.final_metrics(rows, 0.8, 2, {})["finished"]


def test_time_to_target_counts_training_seconds_up_to_the_first_epoch_that_reached_it():
    train_result = {"loss": 0.5, "acc": 0.75, "images": 64, "time_s": 2.0, "images_per_s": 32.0}
    rows = [metrics.epoch_row(e, {**train_result, "time_s": 1.0 + e}, {"loss": 0.25, "acc": a, "images": 10}, 0.1)
            for e, a in ((1, 0.97), (2, 0.991), (3, 0.989), (4, 0.995))]
    final = metrics.final_metrics(rows, 0.995, 4, {"target_test_acc": 0.99})
    assert (final["epochs_to_target"], final["time_to_target_s"]) == (2, 2.0 + 3.0)
    assert metrics.epoch_line(rows[1], 4, final).endswith("  reached 99% after 5 s of training")
    assert "reached" not in metrics.epoch_line(rows[3], 4, final)  # only the first time
    assert "99% after 5 s" in metrics.done_line(final, 4, Path("run"))
    missed = metrics.final_metrics(rows[:1], 0.97, 1, {"target_test_acc": 0.99})
    assert missed["time_to_target_s"] is None and "99% not reached" in metrics.done_line(missed, 1, Path("run"))


def test_target_accuracy_defaults_to_the_datasets_and_can_be_set():
    info = {"source": "test files"}
    assert config.run_config(options(), info, [], [], 0, 1, torch.device("cpu"))["target_test_acc"] == 0.99
    assert config.run_config(options(dataset="fashion-mnist", target_acc=93.5), info, [], [], 0, 1,
                             torch.device("cpu"))["target_test_acc"] == 0.935


def test_a_model_that_cannot_take_the_images_stops_with_a_message_not_a_traceback():
    model = models.build_model(options(), {"in_channels": 1, "num_classes": 10}, torch.device("cpu"))
    with pytest.raises(SystemExit, match=r"--model lenet5 cannot take --dataset mnist's 40x40 images: .*at most 32x32"):
        models.check_input_size(model, torch.zeros(1, 40, 40), options(), torch.device("cpu"))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    models.check_input_size(model, torch.zeros(1, 28, 28), options(), torch.device("cpu"))
    assert model.training and all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_learning_curves_are_drawn_from_metrics_json(tmp_path):
    from custom_conv.training import curves
    train_result = {"loss": 0.5, "acc": 0.75, "images": 64, "time_s": 30.0, "images_per_s": 32.0}
    dirs = []
    for backend, accs in (("custom", (0.97, 0.992)), ("torch", (0.98, 0.989))):
        rows = [metrics.epoch_row(e, train_result, {"loss": 0.1 / e, "acc": a, "images": 10}, 0.1)
                for e, a in enumerate(accs, 1)]
        cfg = {"backend": backend, "model": "lenet5", "dataset": "mnist", "machine": "test", "torch": "x",
               "target_test_acc": 0.99}
        (tmp_path / backend).mkdir()
        checkpoints.write_json(metrics.final_metrics(rows, max(accs), 2, cfg), tmp_path / backend / "metrics.json")
        dirs.append(str(tmp_path / backend))
    assert curves.label(curves.read_run(dirs[0])) == "custom: 99.20% test, 99% after 60 s, 1.0 min"
    assert curves.label(curves.read_run(dirs[1])) == "torch: 98.90% test, 1.0 min"
    curves.main([*dirs, "--out", str(tmp_path / "curves.png")])
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="curves: .*metrics.json"):
        curves.main([str(tmp_path / "nothing-here"), "--out", str(tmp_path / "x.png")])


def test_tensorboard_writes_scalars_histograms_images_and_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = models.build_model(options(backend="torch"), {"in_channels": 1, "num_classes": 10}, torch.device("cpu"))
    probe = torch.rand(1, 1, 28, 28)
    F.cross_entropy(model(probe), torch.tensor([3])).backward()
    row = {"train_loss": 1.0, "test_loss": 2.0, "train_acc": 0.5, "test_acc": 0.25, "lr": 0.1,
           "images_per_s": 100.0, "epoch_time_s": 3.0}
    writer = tensorboard.open_writer(tmp_path)
    tensorboard.log_input(writer, probe)
    tensorboard.log_epoch(writer, model, 1, row, probe)
    tensorboard.log_hparams(writer, options(epochs=1), {"test_acc": 0.25, "test_loss": 2.0, "best_test_acc": 0.5})
    writer.close()

    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert set(tags["scalars"]) == {"loss/train", "loss/test", "accuracy/train", "accuracy/test", "learning_rate",
                                    "throughput/train_images_per_s", "time/epoch_s", "hparam/test_acc",
                                    "hparam/test_loss", "hparam/best_test_acc"}
    assert events.Scalars("accuracy/test")[0].value == 0.25 and events.Scalars("time/epoch_s")[0].step == 1
    assert set(tags["histograms"]) == {f"{kind}/features.{i}" for kind in ("weights", "gradients") for i in (0, 3)}
    assert set(tags["images"]) == {"feature_maps/input", "filters/first_conv", "feature_maps/features.0",
                                   "feature_maps/features.3"}
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")


def test_a_raised_epoch_total_recomputes_the_schedule_from_where_the_run_stopped():
    def optimizer():
        return torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)

    def run(schedule, epochs, state=None, steps=None):
        """The rates of epochs after `state` (a scheduler's state_dict) of a run of `epochs`; returns them
        and the state after `steps` more epochs."""
        opt = optimizer()
        scheduler = models.make_scheduler(options(schedule=schedule, epochs=epochs), opt)
        if state is not None:
            scheduler.load_state_dict(state)
        rates = []
        for _ in range(steps if steps is not None else epochs - scheduler.last_epoch):
            rates.append(opt.param_groups[0]["lr"])
            opt.step()
            scheduler.step()
        return rates, scheduler.state_dict()

    for schedule in ("cosine", "step", "constant"):
        # The same total: bit for bit the rates of an uninterrupted run.
        whole, _ = run(schedule, 8)
        first, state = run(schedule, 8, steps=3)
        assert first + run(schedule, 8, state)[0] == whole, schedule
    # A finished 4-epoch run extended to 8: each added epoch at the rate an 8-epoch run has there.
    for schedule in ("cosine", "step"):
        _, finished = run(schedule, 4)
        extended, _ = run(schedule, 8, finished)
        assert extended == run(schedule, 8)[0][4:], schedule
    assert run("cosine", 8, run("cosine", 4)[1])[0] == pytest.approx(
        [0.5 * (1 + math.cos(math.pi * e / 8)) for e in (4, 5, 6, 7)])
    assert run("constant", 8, run("constant", 4)[1])[0] == [1.0] * 4


def test_messages_count_epochs_in_the_singular_and_the_plural():
    train_result = {"loss": 0.5, "acc": 0.75, "images": 64, "time_s": 2.0, "images_per_s": 32.0}
    rows = [metrics.epoch_row(1, train_result, {"loss": 0.25, "acc": 0.5, "images": 8}, 0.1)]
    final = metrics.final_metrics(rows, 0.5, 1, {})
    assert "after 1 epoch (" in metrics.done_line(final, 1, Path("run"))
    assert "after 2 epochs (" in metrics.done_line(final, 2, Path("run"))
    assert (metrics.plural(1, "epoch"), metrics.plural(0, "epoch")) == ("1 epoch", "0 epochs")


def test_a_resumed_runs_event_file_sorts_after_the_ones_it_continues(tmp_path):
    # TensorBoard reads event files in name order; within one second names sort by process id and a counter.
    tensorboard.open_writer(tmp_path).close()
    tensorboard.open_writer(tmp_path, resumed_after=1).close()
    first, resumed = sorted(p.name for p in tmp_path.iterdir())
    assert int(resumed.split(".")[3]) > int(first.split(".")[3])


def test_per_class_accuracy_and_confusion_matrix_in_metrics_json():
    confusion = [[3, 1, 0], [0, 0, 0], [1, 1, 2]]
    assert metrics.per_class_accuracy(confusion) == [0.75, None, 0.5]  # None: no test image of the class
    results = metrics.class_results(confusion, ["a", "b", "c"])
    assert results["test_acc_per_class"] == {"a": 0.75, "b": None, "c": 0.5}
    assert results["test_confusion_matrix"]["counts"] == confusion
    train_result = {"loss": 0.5, "acc": 0.75, "images": 64, "time_s": 2.0, "images_per_s": 32.0}
    rows = [metrics.epoch_row(1, train_result, {"loss": 0.25, "acc": 5 / 8, "images": 8}, 0.1)]
    final = metrics.final_metrics(rows, 5 / 8, 1, {}, confusion, ["a", "b", "c"])
    assert list(final)[-4:] == ["test_acc_per_class", "test_confusion_matrix", "config", "history"]


def test_train_epoch_writes_step_scalars_every_n_steps_counted_over_the_run(alone):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 2, generator=g)
    data = DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=8)  # 6 batches
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    args, cpu = SimpleNamespace(epochs=2, amp=False, limit_batches=5), torch.device("cpu")
    written = []
    steps = SimpleNamespace(every=3, write=lambda step, loss, lr: written.append((step, loss, lr)))
    for epoch in (1, 2):
        loop.train_epoch(model, data, optimizer, models.make_scaler(args, cpu), cpu, args, alone, epoch,
                         step_scalars=steps)
    # 5 steps an epoch (--limit-batches): steps 3, 6, 9 of the run, i.e. the second epoch's first and fourth.
    assert [s for s, _, _ in written] == [3, 6, 9] and all(lr == 0.5 for _, _, lr in written)
    assert all(isinstance(loss, float) and loss > 0 for _, loss, _ in written)


def test_tensorboard_graph_of_our_ops_step_scalars_and_class_results_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = models.build_model(options(), {"in_channels": 1, "num_classes": 10}, torch.device("cpu"))
    writer = tensorboard.open_writer(tmp_path)
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert tensorboard.log_graph(writer, model, torch.rand(1, 1, 28, 28)) is None
    assert caught == []  # tracing's warnings are not the user's business
    classes = ["T-shirt/top", "Trouser", "Bag"]
    tensorboard.log_test_classes(writer, [[3, 1, 0], [0, 0, 0], [1, 1, 2]], classes, 4)
    writer.close()
    steps = tensorboard.StepScalars(tmp_path, every=2)
    for step in (2, 4):
        steps.write(step, 1.0 / step, 0.1)
    steps.close()

    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    ops = {node.op for node in events.Graph().node}
    assert {"custom_conv::conv2d_forward", "custom_conv::max_pool2d_forward"} <= ops
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    # No scalar for a class without test images; "/" in a name does not nest the tag.
    assert scalars == {"accuracy_per_class/T-shirt_top": [(4, 0.75)], "accuracy_per_class/Bag": [(4, 0.5)]}
    image = events.Images("confusion_matrix/test")[0]
    assert image.step == 4 and image.width >= 200 and image.height >= 200
    per_step = EventAccumulator(str(tmp_path / "steps"))
    per_step.Reload()
    assert [(e.step, e.value) for e in per_step.Scalars("train_step/loss")] == [(2, 0.5), (4, 0.25)]
    assert [e.value for e in per_step.Scalars("train_step/learning_rate")] == pytest.approx([0.1, 0.1])


def test_a_model_that_cannot_be_traced_leaves_a_one_line_reason_not_a_traceback(tmp_path, capsys):
    class Untraceable(torch.nn.Module):
        def forward(self, x):
            return {"out": x}  # a strict trace (add_graph's) refuses a dict output

    writer = tensorboard.open_writer(tmp_path)
    reason = tensorboard.log_graph(writer, Untraceable(), torch.ones(1, 1, 4, 4))
    writer.close()
    assert reason.startswith("RuntimeError: ") and len(reason) <= 180 and "\n" not in reason
    assert capsys.readouterr().out == ""  # nor torch's own printout of the error


def test_progress_off_a_terminal_prints_a_line_every_interval_with_step_loss_speed_and_eta(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    lines = []
    shown = progress.Progress("epoch 2/5", lines.append, every_s=30, bar=False, passes_after=3)
    shown.start(10)
    for step, t in enumerate((10, 20, 31, 40, 50, 62), 1):  # seconds into the pass after each step
        now[0] = 100.0 + t
        shown.update(step, 16 * step, torch.tensor(0.5 * 16 * step, dtype=torch.float64))
    shown.close()
    # Lines at 31 s (step 3) and 62 s (step 6), not at every step.
    assert lines == ["  epoch 2/5  step 3/10  loss 0.5000  2 img/s  ETA 1:12 (run 6:22)",
                     "  epoch 2/5  step 6/10  loss 0.5000  2 img/s  ETA 0:41 (run 5:51)"]
    # A known epoch length (pass_s) replaces this pass's projection in the run's ETA; the last pass has none.
    for passes_after, eta in ((2, "ETA 0:02 (run 0:16)"), (0, "ETA 0:02")):
        now[0] = 100.0
        every_step = progress.Progress("epoch 4/5", lines.append, every_s=0, bar=False, passes_after=passes_after,
                                       pass_s=7.0)
        every_step.start(2)
        now[0] = 102.0
        every_step.update(1, 16, 8.0)
        assert lines[-1] == f"  epoch 4/5  step 1/2  loss 0.5000  8 img/s  {eta}"
    assert progress.on_terminal(io.StringIO()) is False
    assert progress.clock(3725) == "1:02:05" and progress.clock(59.6) == "1:00"


def test_the_training_log_is_flushed_line_by_line(tmp_path, monkeypatch, alone):
    # Off a terminal stdout is block-buffered: unflushed, a log file shows nothing until the buffer fills.
    write_mnist(tmp_path / "data", n_train=32, n_test=16)

    class Recorder(io.StringIO):
        flushed_lines = 0

        def flush(self):
            self.flushed_lines = self.getvalue().count("\n")

    out = Recorder()
    monkeypatch.setattr(sys, "stdout", out)
    train.main(["--data-dir", str(tmp_path / "data"), "--no-download", "--epochs", "1", "--batch-size", "16",
                "--threads", "1", "--progress-every", "0", "--logdir", str(tmp_path / "run")])
    assert out.getvalue().count("\n") >= 5 and out.flushed_lines == out.getvalue().count("\n")

"""The run's TensorBoard events (rank 0 writes them): the model's graph once;
per epoch the scalars, histograms of every conv layer's weights and
gradients, the first layer's filters, the feature maps of one fixed test
image, the test's confusion matrix and per-class accuracy; at the end the
hyper-parameters with the final metrics. The training loss and learning rate
every --log-every optimizer steps go to the run's steps/ directory (StepScalars).

torch.utils.tensorboard is imported only where it is used, so processes that
write no events never load it.
"""
import contextlib
import io
import re
import warnings

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import hparams
from .metrics import per_class_accuracy

SCALARS = (("loss/train", "train_loss"), ("loss/test", "test_loss"), ("accuracy/train", "train_acc"),
           ("accuracy/test", "test_acc"), ("learning_rate", "lr"),
           ("throughput/train_images_per_s", "images_per_s"), ("time/epoch_s", "epoch_time_s"))


def open_writer(run_dir, resumed_after=None, **options):
    """A SummaryWriter for `run_dir`; `resumed_after`: the step (epoch) a resumed run continues from."""
    from torch.utils.tensorboard import SummaryWriter

    if resumed_after is not None:
        _wait_for_a_later_second(run_dir)
    # purge_step drops events a crashed run wrote after its last checkpoint.
    return SummaryWriter(str(run_dir), purge_step=None if resumed_after is None else resumed_after + 1, **options)


def _wait_for_a_later_second(directory):
    """Waits (a second at most) until the clock is past the second the newest event file in `directory`
    was opened in.

    TensorBoard reads a run's event files in name order, as the order they were
    written in. The names start with that second, then host, process id and a
    counter, which within one second sort as text, not in time (".10" before
    ".9"): a resumed run's file, opened in the same second, could be read
    before the events it continues.
    """
    seconds = [int(p.name.split(".")[3]) for p in Path(directory).glob("events.out.tfevents.*")
               if p.name.split(".")[3].isdigit()]
    if seconds:
        time.sleep(max(0.0, max(seconds) + 1 - time.time()))


class StepScalars:
    """The training loss and learning rate every `every` optimizer steps, in run_dir/steps.

    A writer of its own, and so a run of its own in TensorBoard, because its
    steps count optimizer steps where the run's count epochs: a resumed run's
    purge_step drops, in every tag of a directory, the events from that step
    on, so the two counts cannot share one. `resumed_after`: the optimizer
    steps a resumed run continues from.
    """

    def __init__(self, run_dir, every, resumed_after=None):
        self.every = every
        # Flushed often: these are what shows a diverging run before its epoch ends.
        self.writer = open_writer(run_dir / "steps", resumed_after, flush_secs=10)

    def write(self, step, loss, lr):
        self.writer.add_scalar("train_step/loss", loss, step)
        self.writer.add_scalar("train_step/learning_rate", lr, step)

    def flush(self):
        self.writer.flush()

    def close(self):
        self.writer.close()


def log_graph(writer, model, probe):
    """The model's graph, traced on `probe`; returns why not when tracing fails, else None."""
    # Tracing warns about every Python-level size check of the layers (the
    # traced graph is drawn, never run, so they do not matter here) and that
    # jit.trace is deprecated; neither is for the user of train.py. When it
    # fails, torch prints the error to stdout; the caller says it in one line.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace", category=FutureWarning)
        try:
            writer.add_graph(model, probe)
        except Exception as error:  # whatever the tracer trips on, training goes on without the graph
            text = (str(error).strip().splitlines() or [""])[0]
            return f"{type(error).__name__}: {text if len(text) <= 160 else text[:157] + '...'}"
    return None


def conv_layers(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]


def _tiles(t):
    """(N, 1, H, W) -> each map scaled to [0, 1] on its own, so weak ones stay visible."""
    t = t.detach().float().cpu()
    low = t.amin(dim=(1, 2, 3), keepdim=True)
    high = t.amax(dim=(1, 2, 3), keepdim=True)
    return (t - low) / (high - low).clamp_min(1e-12)


def log_input(writer, probe):
    """The probe image whose feature maps log_epoch shows, once, at step 0."""
    writer.add_image("feature_maps/input", _tiles(probe[:1, :1].cpu())[0], 0)


def log_epoch(writer, model, epoch, row, probe):
    """Everything an epoch shows; `row` is the epoch's entry of metrics.json's history."""
    for tag, key in SCALARS:
        writer.add_scalar(tag, row[key], epoch)
    convs = conv_layers(model)
    log_histograms(writer, convs, epoch)
    if convs:
        log_filters(writer, convs[0][1], epoch)
        log_feature_maps(writer, model, (convs[0], convs[-1]), probe, epoch)


def log_histograms(writer, convs, epoch):
    for name, m in convs:
        writer.add_histogram(f"weights/{name}", m.weight.detach().float().cpu(), epoch)
        if m.weight.grad is not None:  # the gradient of the epoch's last step
            writer.add_histogram(f"gradients/{name}", m.weight.grad.detach().float().cpu(), epoch)


def log_filters(writer, conv, epoch):
    """`conv`'s filters as one grid: in colour for RGB inputs, else one grey tile per input channel."""
    from torchvision.utils import make_grid

    weight = conv.weight.detach()
    out_ch, in_ch, kh, kw = weight.shape
    filters = weight if in_ch == 3 else weight.reshape(out_ch * in_ch, 1, kh, kw)
    # Upscaled so that a 3x3 or 5x5 filter is more than a few screen pixels.
    filters = F.interpolate(_tiles(filters.float()), scale_factor=8, mode="nearest")
    writer.add_image("filters/first_conv", make_grid(filters, nrow=in_ch if in_ch not in (1, 3) else 8,
                                                     padding=2, pad_value=1.0), epoch)


def log_feature_maps(writer, model, convs, probe, epoch):
    """The outputs of the (name, module) pairs `convs` for the image `probe`, in eval mode."""
    from torchvision.utils import make_grid

    maps = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: maps.__setitem__(name, out.detach()))
             for name, m in convs]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(probe)
    model.train(was_training)
    for h in hooks:
        h.remove()
    for name, fmap in maps.items():
        fmap = fmap[0].unsqueeze(1)  # (C, 1, H, W)
        scale = max(1, 64 // fmap.shape[-1])
        fmap = F.interpolate(_tiles(fmap), scale_factor=scale, mode="nearest")
        writer.add_image(f"feature_maps/{name}", make_grid(fmap, nrow=8, padding=2, pad_value=1.0), epoch)


def _tag(name):
    """A class name as one level of a tag ("T-shirt/top" -> "T-shirt_top")."""
    return re.sub(r"[^\w .+-]", "_", name)


def log_test_classes(writer, confusion, classes, epoch):
    """The test's accuracy per class (classes with test images) and its confusion matrix as an image."""
    for name, acc in zip(classes, per_class_accuracy(confusion)):
        if acc is not None:
            writer.add_scalar(f"accuracy_per_class/{_tag(name)}", acc, epoch)
    writer.add_image("confusion_matrix/test", confusion_picture(confusion, classes, epoch), epoch,
                     dataformats="HWC")


def confusion_picture(confusion, classes, epoch):
    """An RGB (H, W, 3) uint8 picture of `confusion`: rows (true classes) coloured by their share of each
    prediction, so that rare classes are as visible as common ones; counts written in up to 20 classes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(confusion, dtype=np.float64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    size = min(12.0, 3.0 + 0.45 * n)
    fig = Figure(figsize=(size, size), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    if n <= 20:
        ticks = range(n)
        ax.set_xticks(ticks, classes, rotation=90, fontsize=8)
        ax.set_yticks(ticks, classes, fontsize=8)
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, f"{counts[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if shares[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=f"test confusion matrix, epoch {epoch}")
    fig.tight_layout()
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def log_hparams(writer, args, final):
    """The hyper-parameters and final metrics (the HParams tab), at step args.epochs."""
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams(args).items()}
    metrics = {"hparam/test_acc": final["test_acc"], "hparam/test_loss": final["test_loss"],
               "hparam/best_test_acc": final["best_test_acc"]}
    # Written into this run's own event file (add_hparams would open a new
    # sub-run), so the hparams dashboard and the scalars share one run.
    for summary in hparams_summaries(hp, metrics):
        writer.file_writer.add_summary(summary)
    for k, v in metrics.items():
        writer.add_scalar(k, v, args.epochs)

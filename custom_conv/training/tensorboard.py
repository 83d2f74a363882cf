"""The run's TensorBoard events (rank 0 writes them): per epoch the scalars,
histograms of every conv layer's weights and gradients, the first layer's
filters and the feature maps of one fixed test image; at the end the
hyper-parameters with the final metrics.

torch.utils.tensorboard is imported only where it is used, so processes that
write no events never load it.
"""
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import hparams

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

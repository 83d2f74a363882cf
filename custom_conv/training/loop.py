"""One epoch of training, and one pass over the test set.

Both return sums over all processes of a torchrun job (through `ddp`), so
every rank reports the same numbers. What they show while running (a
Progress, the per-step TensorBoard scalars) is handed to them by the caller.
"""
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F


def autocast(device, enabled):
    """--amp: float16 on GPUs, bfloat16 on CPUs (no context at all when off)."""
    if not enabled:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


def batches(loader, limit):
    """How many batches of `loader` a pass takes: all, or at most `limit` (--limit-batches) when given."""
    return min(len(loader), limit or len(loader))


def train_epoch(model, loader, optimizer, scaler, device, args, ddp, epoch, progress=None, step_scalars=None):
    """Trains on at most args.limit_batches batches of `loader`; returns loss, acc, images, time_s, images_per_s.

    `progress`: a Progress told after every step. `step_scalars`: a StepScalars that gets this process's
    batch loss and the learning rate every step_scalars.every optimizer steps, counted over the run (an
    epoch being `batches` steps), so that only those steps wait for the loss's value.
    """
    model.train()
    total = batches(loader, args.limit_batches)
    first_step = (epoch - 1) * total  # optimizer steps before this epoch
    every = step_scalars.every if step_scalars is not None else 0
    if progress is not None:
        progress.start(total)
    # Running sums stay on the device: reading them back every step would wait for the GPU.
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    start = time.perf_counter()
    for step, (x, y) in enumerate(loader):
        if step >= total:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, args.amp):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach().double() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if every and (first_step + step + 1) % every == 0:
            step_scalars.write(first_step + step + 1, loss.item(), optimizer.param_groups[0]["lr"])
        if progress is not None:
            progress.update(step + 1, seen, loss_sum)
    if progress is not None:
        progress.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    loss_sum, correct, seen = ddp.sum(loss_sum.item(), correct.item(), seen, device=device)
    return {"loss": loss_sum / max(seen, 1), "acc": correct / max(seen, 1), "images": int(seen),
            "time_s": elapsed, "images_per_s": seen / elapsed if elapsed > 0 else 0.0}


@torch.no_grad()
def evaluate(model, loader, device, args, ddp, progress=None, num_classes=None):
    """Loss, accuracy and confusion matrix over at most args.limit_batches batches of `loader`.

    "confusion"[i][j] counts the images of class i predicted as j; it has `num_classes` rows (default: as
    many as the model has outputs; give it under torchrun, where a process may have no test batch).
    """
    model.eval()
    total = batches(loader, args.limit_batches)
    if progress is not None:
        progress.start(total)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    counts = None if num_classes is None else torch.zeros(num_classes ** 2, dtype=torch.int64, device=device)
    seen = 0
    for step, (x, y) in enumerate(loader):
        if step >= total:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, args.amp):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        if counts is None:
            num_classes = logits.shape[1]
            counts = torch.zeros(num_classes ** 2, dtype=torch.int64, device=device)
        counts += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes ** 2)
        seen += len(y)
        if progress is not None:
            progress.update(step + 1, seen, loss_sum)
    if progress is not None:
        progress.close()
    if counts is None:  # no batch, and no num_classes to say how many
        num_classes, counts = 0, torch.zeros(0, dtype=torch.int64, device=device)
    loss_sum, seen = ddp.sum(loss_sum.item(), seen, device=device)
    confusion = ddp.sum_tensor(counts).view(num_classes, num_classes).tolist()
    correct = sum(confusion[i][i] for i in range(num_classes))
    return {"loss": loss_sum / max(seen, 1), "acc": correct / max(seen, 1), "images": int(seen),
            "confusion": confusion}

"""One epoch of training, and one pass over the test set.

Both return sums over all processes of a torchrun job (through `ddp`), so
every rank reports the same numbers.
"""
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from tqdm import tqdm


def autocast(device, enabled):
    """--amp: float16 on GPUs, bfloat16 on CPUs (no context at all when off)."""
    if not enabled:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


def train_epoch(model, loader, optimizer, scaler, device, args, ddp, epoch):
    """Trains on at most args.limit_batches batches of `loader`; returns loss, acc, images, time_s, images_per_s."""
    model.train()
    total = min(len(loader), args.limit_batches or len(loader))
    bar = tqdm(loader, total=total, desc=f"epoch {epoch}/{args.epochs}", leave=False, dynamic_ncols=True,
               disable=None if ddp.main else True)
    # Running sums stay on the device: reading them back every step would wait for the GPU.
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    start = time.perf_counter()
    for step, (x, y) in enumerate(bar):
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
        if step % 10 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    loss_sum, correct, seen = ddp.sum(loss_sum.item(), correct.item(), seen, device=device)
    return {"loss": loss_sum / max(seen, 1), "acc": correct / max(seen, 1), "images": int(seen),
            "time_s": elapsed, "images_per_s": seen / elapsed if elapsed > 0 else 0.0}


@torch.no_grad()
def evaluate(model, loader, device, args, ddp):
    """Mean loss and accuracy over at most args.limit_batches batches of `loader`."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for step, (x, y) in enumerate(loader):
        if args.limit_batches and step >= args.limit_batches:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, args.amp):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    loss_sum, correct, seen = ddp.sum(loss_sum, correct, seen, device=device)
    return {"loss": loss_sum / max(seen, 1), "acc": correct / max(seen, 1), "images": int(seen)}

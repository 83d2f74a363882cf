#!/usr/bin/env python
"""Trains an image classifier whose convolutions and max-pools are custom_conv's.

    python train.py                                   # LeNet-5 on MNIST, our layers
    python train.py --model resnet20 --dataset cifar10 --epochs 160 --lr 0.1 --batch-size 128 --schedule step
    python train.py --resume runs/lenet5-mnist-custom-20261125-101500
    torchrun --nproc_per_node=2 train.py --epochs 2    # DistributedDataParallel
    tensorboard --logdir runs

Each run directory holds checkpoint.pt (the latest epoch), best.pt, metrics.json
and the TensorBoard events. See README.md, section "Training".
"""
import argparse
import json
import os
import platform
import random
import sys
import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from custom_conv.data import DATASETS, DatasetUnavailable, load_datasets
from custom_conv.models import BACKENDS, MODELS, get_model

CHECKPOINT, BEST = "checkpoint.pt", "best.pt"

DEFAULTS = {
    "model": "lenet5", "dataset": "mnist", "data_dir": "./data", "download": True,
    "epochs": 10, "batch_size": 64, "lr": 0.05, "optimizer": "sgd", "momentum": 0.9,
    "weight_decay": 5e-4, "schedule": "cosine", "augment": True, "backend": "custom",
    "device": "auto", "amp": False, "seed": 0, "workers": 0, "logdir": None, "resume": None,
    "limit_batches": None, "eval_only": False, "stop_after": None, "threads": None,
}
# What decides the trained weights. A resumed run takes these from its
# checkpoint; anything else (device, workers, paths) may change on resume.
HPARAMS = ("model", "dataset", "epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay",
           "schedule", "augment", "backend", "amp", "seed", "limit_batches")


def build_parser():
    # No defaults here (they are in DEFAULTS): what parse_args returns is then
    # exactly what the user typed, which is what --resume has to check.
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    d = DEFAULTS
    g = p.add_argument_group("model and data")
    g.add_argument("--model", choices=list(MODELS), help=f"default {d['model']}")
    g.add_argument("--dataset", choices=list(DATASETS), help=f"default {d['dataset']}")
    g.add_argument("--data-dir", help=f"where datasets live or are downloaded to (default {d['data_dir']})")
    g.add_argument("--no-download", dest="download", action="store_false",
                   help="never touch the network for data")
    g.add_argument("--no-augment", dest="augment", action="store_false",
                   help="switch off random augmentation (CIFAR: crops and flips; MNIST-like: small shifts "
                        "and rotations)")
    g.add_argument("--backend", choices=BACKENDS, help="whose conv2d / max_pool2d: custom_conv's (default) or torch's")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help=f"default {d['epochs']}")
    g.add_argument("--batch-size", type=int, help=f"per process (default {d['batch_size']})")
    g.add_argument("--lr", type=float, help=f"peak learning rate (default {d['lr']})")
    g.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), help=f"default {d['optimizer']}")
    g.add_argument("--momentum", type=float, help=f"SGD momentum (default {d['momentum']})")
    g.add_argument("--weight-decay", type=float, help=f"default {d['weight_decay']}")
    g.add_argument("--schedule", choices=("cosine", "step", "constant"),
                   help="learning rate per epoch: cosine to 0 (default), step (x0.1 at 50%% and 75%%), constant")
    g.add_argument("--seed", type=int, help=f"default {d['seed']}")
    g.add_argument("--amp", action="store_true",
                   help="autocast: float16 with gradient scaling on GPUs, bfloat16 on CPUs; convolutions "
                        "(ours and torch's) run in that dtype")
    g = p.add_argument_group("running")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"),
                   help="auto: a GPU if there is one and the backend has kernels for it")
    g.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    g.add_argument("--workers", type=int, help=f"DataLoader worker processes (default {d['workers']})")
    g.add_argument("--logdir", help="the run directory (default runs/MODEL-DATASET-BACKEND-TIME)")
    g.add_argument("--resume", metavar="RUN_DIR_OR_CHECKPOINT", help="continue a run from its last checkpoint")
    g.add_argument("--eval-only", action="store_true", help="evaluate the --resume checkpoint and exit")
    g.add_argument("--limit-batches", type=int, metavar="N", help="at most N batches per epoch and per test (smoke runs)")
    g.add_argument("--stop-after", type=int, metavar="K",
                   help="stop after epoch K as if interrupted; --resume continues the run")
    return p


def parse_args(argv=None):
    given = vars(build_parser().parse_args(argv))
    return argparse.Namespace(**{**DEFAULTS, **given}), set(given)


# --------------------------------------------------------------------- setup

class Dist:
    """This process's place in a torchrun job (or a lone process)."""

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1
        self.main = self.rank == 0

    def start(self, device):
        if self.enabled:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def sum(self, *values, device):
        """Sums numbers over processes (identity when alone)."""
        t = torch.tensor(values, dtype=torch.float64, device=device)
        if self.enabled:
            dist.all_reduce(t)
        return t.tolist()

    def barrier(self):
        if self.enabled:
            dist.barrier()


def custom_kernels_on_cuda():
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("custom_conv::conv2d_forward", "CUDA")
    except Exception:
        return False


def pick_device(choice, backend, ddp):
    if choice == "auto":
        usable = torch.cuda.is_available() and (backend == "torch" or custom_kernels_on_cuda())
        choice = "cuda" if usable else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            sys.exit("train.py: --device cuda, but torch sees no CUDA GPU")
        return torch.device("cuda", ddp.local_rank)
    return torch.device("cpu")


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(generator):
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "sampler": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state, generator):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    generator.set_state(state["sampler"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj, path):
    """torch.save that leaves either the old file or the complete new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def write_json(obj, path):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def machine_description(device):
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({platform.machine()}, {os.cpu_count()} CPU cores)"
    return f"{os.cpu_count()}-core {platform.machine()} CPU, {torch.get_num_threads()} threads"


def make_optimizer(args, params):
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                               nesterov=args.momentum > 0)
    cls = torch.optim.Adam if args.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=args.lr, weight_decay=args.weight_decay)


def make_scheduler(args, optimizer):
    if args.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    if args.schedule == "step":
        milestones = [max(1, args.epochs // 2), max(1, args.epochs * 3 // 4)]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


def resolve_resume(args, given):
    """Loads the checkpoint named by --resume and adopts its hyper-parameters."""
    path = Path(args.resume)
    ckpt_path = path / CHECKPOINT if path.is_dir() else path
    if not ckpt_path.is_file():
        sys.exit(f"train.py: no checkpoint at {ckpt_path}")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    clashes = [f"--{k.replace('_', '-')} {getattr(args, k)} (checkpoint: {ckpt['args'][k]})"
               for k in HPARAMS if k in given and getattr(args, k) != ckpt["args"][k]]
    if clashes:
        sys.exit("train.py: a resumed run keeps its hyper-parameters; remove " + ", ".join(clashes))
    for k in HPARAMS:
        setattr(args, k, ckpt["args"][k])
    if "logdir" not in given:
        args.logdir = str(ckpt_path.parent)
    return ckpt


def default_logdir(args):
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{args.model}-{args.dataset}-{args.backend}-{stamp}"
    run, n = base, 1
    while run.exists():
        n += 1
        run = base.with_name(f"{base.name}-{n}")
    return str(run)


# ---------------------------------------------------------------- train/test

def autocast(device, enabled):
    if not enabled:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


def train_epoch(model, loader, optimizer, scaler, device, args, ddp, epoch):
    model.train()
    total = min(len(loader), args.limit_batches or len(loader))
    bar = tqdm(loader, total=total, desc=f"epoch {epoch}/{args.epochs}", leave=False, dynamic_ncols=True,
               disable=None if ddp.main else True)
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


# ---------------------------------------------------------------- TensorBoard

def conv_layers(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]


def _tiles(t):
    """(N, 1, H, W) -> each map scaled to [0, 1] on its own, so weak ones stay visible."""
    t = t.detach().float().cpu()
    low = t.amin(dim=(1, 2, 3), keepdim=True)
    high = t.amax(dim=(1, 2, 3), keepdim=True)
    return (t - low) / (high - low).clamp_min(1e-12)


def log_tensorboard(writer, model, epoch, row, probe, lr):
    from torchvision.utils import make_grid

    for tag, value in (("loss/train", row["train_loss"]), ("loss/test", row["test_loss"]),
                       ("accuracy/train", row["train_acc"]), ("accuracy/test", row["test_acc"]),
                       ("learning_rate", lr), ("throughput/train_images_per_s", row["images_per_s"]),
                       ("time/epoch_s", row["epoch_time_s"])):
        writer.add_scalar(tag, value, epoch)
    convs = conv_layers(model)
    for name, m in convs:
        writer.add_histogram(f"weights/{name}", m.weight.detach().float().cpu(), epoch)
        if m.weight.grad is not None:  # the gradient of the epoch's last step
            writer.add_histogram(f"gradients/{name}", m.weight.grad.detach().float().cpu(), epoch)
    if not convs:
        return
    first = convs[0][1].weight.detach()
    out_ch, in_ch, kh, kw = first.shape
    filters = first if in_ch == 3 else first.reshape(out_ch * in_ch, 1, kh, kw)
    # Upscaled so that a 3x3 or 5x5 filter is more than a few screen pixels.
    filters = F.interpolate(_tiles(filters.float()), scale_factor=8, mode="nearest")
    writer.add_image("filters/first_conv", make_grid(filters, nrow=in_ch if in_ch not in (1, 3) else 8,
                                                     padding=2, pad_value=1.0), epoch)
    maps = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: maps.__setitem__(name, out.detach()))
             for name, m in (convs[0], convs[-1])]
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
    from torch.utils.tensorboard.summary import hparams

    hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in
          ((k, getattr(args, k)) for k in HPARAMS)}
    metrics = {"hparam/test_acc": final["test_acc"], "hparam/test_loss": final["test_loss"],
               "hparam/best_test_acc": final["best_test_acc"]}
    # Written into this run's own event file (add_hparams would open a new
    # sub-run), so the hparams dashboard and the scalars share one run.
    for summary in hparams(hp, metrics):
        writer.file_writer.add_summary(summary)
    for k, v in metrics.items():
        writer.add_scalar(k, v, args.epochs)


# ---------------------------------------------------------------------- main

def main(argv=None):
    args, given = parse_args(argv)
    ddp = Dist()
    if args.threads:
        torch.set_num_threads(args.threads)
    log = print if ddp.main else (lambda *a, **k: None)
    ckpt = resolve_resume(args, given) if args.resume else None
    if args.eval_only and ckpt is None:
        sys.exit("train.py: --eval-only needs --resume RUN_DIR_OR_CHECKPOINT")
    device = pick_device(args.device, args.backend, ddp)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    ddp.start(device)
    try:
        return run(args, ddp, device, ckpt, log)
    finally:
        if ddp.enabled:
            dist.destroy_process_group()


def run(args, ddp, device, ckpt, log):
    seed_everything(args.seed)

    # Rank 0 fetches the data (if it must) before the others look for it.
    try:
        if ddp.main:
            train_set, test_set, info = load_datasets(args.dataset, args.data_dir, args.augment,
                                                      download=args.download, log=log)
        ddp.barrier()
        if not ddp.main:
            train_set, test_set, info = load_datasets(args.dataset, args.data_dir, args.augment,
                                                      download=False, log=lambda *a: None)
    except DatasetUnavailable as error:
        sys.exit(f"train.py: {error}")

    model = get_model(args.model, in_channels=info["in_channels"], num_classes=info["num_classes"],
                      backend=args.backend)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    # Each process then draws its own augmentations; the data order comes
    # from the seeded samplers below.
    if ddp.enabled:
        seed_everything(args.seed + ddp.rank)

    generator = torch.Generator()
    generator.manual_seed(args.seed)
    loader_kw = {"batch_size": args.batch_size, "num_workers": args.workers,
                 "pin_memory": device.type == "cuda", "persistent_workers": False}
    if ddp.enabled:
        sampler = DistributedSampler(train_set, num_replicas=ddp.world_size, rank=ddp.rank, shuffle=True,
                                     seed=args.seed)
        train_loader = DataLoader(train_set, sampler=sampler, generator=generator, **loader_kw)
        # Every test image exactly once over all processes (DistributedSampler would pad).
        test_shard = Subset(test_set, range(ddp.rank, len(test_set), ddp.world_size))
    else:
        sampler = None
        train_loader = DataLoader(train_set, shuffle=True, generator=generator, **loader_kw)
        test_shard = test_set
    test_loader = DataLoader(test_shard, batch_size=max(args.batch_size, 256), shuffle=False,
                             num_workers=args.workers, pin_memory=device.type == "cuda")

    run_dir = Path(args.logdir or default_logdir(args))
    log(f"{args.model} ({n_params:,} parameters, {args.backend} conv/max-pool) on {info['source']}; "
        f"{device}{f' x {ddp.world_size} processes' if ddp.enabled else ''}; run directory {run_dir}")

    if args.eval_only:
        result = evaluate(model, test_loader, device, args, ddp)
        log(f"eval  epoch {ckpt['epoch']}  test loss {result['loss']:.4f}  acc {100 * result['acc']:.2f}%  "
            f"({result['images']} images)")
        out = {"checkpoint_epoch": ckpt["epoch"], "test_loss": result["loss"], "test_acc": result["acc"],
               "test_images": result["images"], "dataset_source": info["source"], "device": str(device)}
        if ddp.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(out, run_dir / "eval.json")
        return out

    ddp_model = model
    if ddp.enabled:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(args, model.parameters())
    scheduler = make_scheduler(args, optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and device.type == "cuda")
    start_epoch, history, best_acc = 0, [], -1.0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, history, best_acc = ckpt["epoch"], ckpt["history"], ckpt["best_test_acc"]
        states = ckpt["rng"]
        if len(states) != ddp.world_size:
            log(f"note: checkpoint from {len(states)} processes resumed on {ddp.world_size}; "
                "random augmentations will not repeat those of an uninterrupted run")
        set_rng_state(states[min(ddp.rank, len(states) - 1)], generator)
        log(f"resuming after epoch {start_epoch} of {args.epochs}")

    writer = None
    if ddp.main:
        from torch.utils.tensorboard import SummaryWriter

        run_dir.mkdir(parents=True, exist_ok=True)
        # purge_step drops events a crashed run wrote after its last checkpoint.
        writer = SummaryWriter(str(run_dir), purge_step=start_epoch + 1 if ckpt is not None else None)
        probe = test_set[0][0].unsqueeze(0).to(device)  # the same image every epoch
        if ckpt is None:
            writer.add_image("feature_maps/input", _tiles(probe[:1, :1].cpu())[0], 0)

    config = {k: getattr(args, k) for k in HPARAMS}
    config.update(dataset_source=info["source"], train_images=len(train_set), test_images=len(test_set),
                  parameters=n_params, world_size=ddp.world_size, device=str(device),
                  machine=machine_description(device), torch=torch.__version__)
    final = None
    if start_epoch >= args.epochs:
        log(f"the run finished all {args.epochs} epochs already; nothing to do")
        return json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else None
    for epoch in range(start_epoch + 1, args.epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        train = train_epoch(ddp_model, train_loader, optimizer, scaler, device, args, ddp, epoch)
        test = evaluate(model, test_loader, device, args, ddp)
        scheduler.step()
        best_acc = max(best_acc, test["acc"])
        row = {"epoch": epoch, "train_loss": train["loss"], "train_acc": train["acc"], "test_loss": test["loss"],
               "test_acc": test["acc"], "lr": lr, "epoch_time_s": train["time_s"],
               "images_per_s": train["images_per_s"], "train_images": train["images"],
               "test_images": test["images"]}
        history.append(row)
        log(f"epoch {epoch:>3}/{args.epochs}  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:6.2f}%"
            f"  test loss {row['test_loss']:.4f} acc {100 * row['test_acc']:6.2f}%  lr {lr:.4g}"
            f"  {row['images_per_s']:,.0f} img/s  {row['epoch_time_s']:.1f} s")

        # Every process's RNG, so that each continues where it stopped.
        states = [rng_state(generator)]
        if ddp.enabled:
            states = [None] * ddp.world_size
            dist.all_gather_object(states, rng_state(generator))
        final = {"test_acc": test["acc"], "test_loss": test["loss"], "best_test_acc": best_acc,
                 "epochs_done": epoch, "finished": epoch == args.epochs,
                 "total_train_time_s": sum(r["epoch_time_s"] for r in history),
                 "config": config, "history": history}
        if ddp.main:
            log_tensorboard(writer, model, epoch, row, probe, lr)
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                     "args": config | {k: getattr(args, k) for k in HPARAMS}, "history": history,
                     "best_test_acc": best_acc, "rng": states}
            atomic_save(state, run_dir / CHECKPOINT)
            if test["acc"] >= best_acc:
                atomic_save(state, run_dir / BEST)
            if epoch == args.epochs:
                log_hparams(writer, args, final)
            write_json(final, run_dir / "metrics.json")
            writer.flush()
        if args.stop_after is not None and epoch >= args.stop_after and epoch < args.epochs:
            log(f"stopping after epoch {epoch} (--stop-after); continue with --resume {run_dir}")
            break
    if writer is not None:
        writer.close()
    if final is not None and final["finished"]:
        log(f"done: test accuracy {100 * final['test_acc']:.2f}% after {args.epochs} epochs "
            f"({final['total_train_time_s']:.0f} s training); {run_dir / 'metrics.json'}")
    return final


if __name__ == "__main__":
    main()

"""Checkpoints: files written atomically, the state a run continues from, and
the random-number generators' states that make a resumed run repeat an
uninterrupted one bit for bit."""
import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from .config import HPARAMS, SETTINGS

CHECKPOINT, BEST = "checkpoint.pt", "best.pt"


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(generator):
    """Python's, NumPy's, torch's (and CUDA's) RNG states, and `generator`'s (the data order's)."""
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


def _temporary(path):
    """A hidden name next to `path` for writing it; per process, so ranks never share one."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_save(obj, path):
    """torch.save that leaves either the old file or the complete new one, never half of one."""
    path = Path(path)
    tmp = _temporary(path)
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
    """Writes `obj` as indented JSON, replacing any old file in one rename."""
    path = Path(path)
    tmp = _temporary(path)
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def resolve_resume(args, given):
    """Loads the checkpoint named by --resume and adopts its hyper-parameters and settings.

    `given` holds the options typed on the command line. Changing a
    hyper-parameter of the run is refused, except raising --epochs, which
    extends the run. SETTINGS (the data directory, ...) are the checkpoint's
    unless given; --logdir defaults to the checkpoint's directory. --eval-only
    tests the whole test set unless --limit-batches is given: the run's own
    limit is a smoke run's, not a choice of test set.
    """
    path = Path(args.resume)
    ckpt_path = path / CHECKPOINT if path.is_dir() else path
    if not ckpt_path.is_file():
        sys.exit(f"train.py: no checkpoint at {ckpt_path}")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    # Checkpoints written before --pool existed were max-pooling runs.
    saved = {"pool": "max", **ckpt["args"]}
    kept = [k for k in HPARAMS if not (k == "limit_batches" and args.eval_only)]
    extend = "epochs" in given and args.epochs > saved["epochs"]
    clashes = [f"--{k.replace('_', '-')} {getattr(args, k)} (checkpoint: {saved[k]})"
               for k in kept if k in given and getattr(args, k) != saved[k] and not (k == "epochs" and extend)]
    if clashes:
        hint = " (--epochs may only be raised)" if "epochs" in given and not extend else ""
        sys.exit(f"train.py: a resumed run keeps its hyper-parameters{hint}; remove " + ", ".join(clashes))
    for k in kept:
        if not (k == "epochs" and extend):
            setattr(args, k, saved[k])
    for k in SETTINGS:
        if k not in given and k in saved:  # checkpoints written before SETTINGS were kept lack them
            setattr(args, k, saved[k])
    if "logdir" not in given:
        args.logdir = str(ckpt_path.parent)
    return ckpt


def checkpoint_state(model, optimizer, scheduler, scaler, *, epoch, args, history, best_test_acc, rng):
    """What checkpoint.pt holds; `rng` is every process's rng_state, in rank order."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
            "args": args, "history": history, "best_test_acc": best_test_acc, "rng": rng}


def restore(ckpt, optimizer, scheduler, scaler, generator, ddp, log):
    """Puts the training state of `ckpt` back; returns (epochs done, history, best test accuracy)."""
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    states = ckpt["rng"]
    if len(states) != ddp.world_size:
        log(f"note: checkpoint from {len(states)} processes resumed on {ddp.world_size}; "
            "random augmentations will not repeat those of an uninterrupted run")
    set_rng_state(states[min(ddp.rank, len(states) - 1)], generator)
    return ckpt["epoch"], ckpt["history"], ckpt["best_test_acc"]

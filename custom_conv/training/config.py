"""What a run is: its options' defaults, the hyper-parameters that decide its
weights, the directory it writes to and the description metrics.json keeps."""
import os
import platform
from datetime import datetime
from pathlib import Path

import torch

from ..datasets import DATASETS

DEFAULTS = {
    "model": "lenet5", "dataset": "mnist", "data_dir": "./data", "download": True,
    "epochs": 10, "batch_size": 64, "lr": 0.05, "optimizer": "sgd", "momentum": 0.9,
    "weight_decay": 5e-4, "schedule": "cosine", "augment": True, "backend": "custom", "pool": "max",
    "device": "auto", "amp": False, "seed": 0, "workers": 0, "logdir": None, "resume": None,
    "limit_batches": None, "eval_only": False, "stop_after": None, "threads": None, "target_acc": None,
    "log_every": 50, "progress_every": 30.0,
}
# What decides the trained weights. A resumed run takes these from its
# checkpoint; anything else (device, workers, paths) may change on resume.
HPARAMS = ("model", "dataset", "epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay",
           "schedule", "augment", "backend", "pool", "amp", "seed", "limit_batches")


# Not hyper-parameters, but a resumed run keeps them too unless they are given
# again: where its data is (else a resume from another directory would look
# in ./data, and download there), the accuracy it reports reaching and the
# spacing of its per-step scalars (one series, one spacing).
SETTINGS = ("data_dir", "target_acc", "log_every")


def hparams(args):
    """The HPARAMS of `args` as a dict, in HPARAMS order."""
    return {k: getattr(args, k) for k in HPARAMS}


def settings(args):
    """The SETTINGS of `args` as a checkpoint keeps them: the data directory made absolute, so that a
    resume from another working directory finds it."""
    return {"data_dir": str(Path(args.data_dir).resolve()), "target_acc": args.target_acc, "log_every": args.log_every}


def default_logdir(args):
    """runs/MODEL-DATASET-BACKEND-TIME, with -2, -3, ... added rather than reuse a directory."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{args.model}-{args.dataset}-{args.backend}-{stamp}"
    run, n = base, 1
    while run.exists():
        n += 1
        run = base.with_name(f"{base.name}-{n}")
    return str(run)


def machine_description(device):
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({platform.machine()}, {os.cpu_count()} CPU cores)"
    return f"{os.cpu_count()}-core {platform.machine()} CPU, {torch.get_num_threads()} threads"


def run_config(args, info, train_set, test_set, n_params, world_size, device):
    """The "config" of metrics.json (and the "args" of a checkpoint): the
    hyper-parameters, then the data, model size and machine they ran on."""
    config = hparams(args)
    target = args.target_acc / 100 if args.target_acc is not None else DATASETS[args.dataset].target_acc
    config.update(target_test_acc=target, dataset_source=info["source"], train_images=len(train_set),
                  test_images=len(test_set), parameters=n_params, world_size=world_size, device=str(device),
                  machine=machine_description(device), torch=torch.__version__)
    return config

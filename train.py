#!/usr/bin/env python
"""Trains an image classifier whose convolutions and max-pools are custom_conv's.

    python train.py                                   # LeNet-5 on MNIST, our layers
    python train.py --model resnet20 --dataset cifar10 --epochs 160 --lr 0.1 --batch-size 128 --schedule step
    python train.py --resume runs/lenet5-mnist-custom-20261125-101500
    python train.py --resume runs/lenet5-mnist-custom-20261125-101500 --epochs 20   # 10 more epochs
    torchrun --nproc_per_node=2 train.py --epochs 2    # DistributedDataParallel
    tensorboard --logdir runs

Each run directory holds checkpoint.pt (the latest epoch), best.pt, metrics.json
and the TensorBoard events (with the per-step scalars in its steps/ directory).
See README.md, section "Training".
"""
import argparse

from custom_conv import training
from custom_conv.datasets import DATASETS
from custom_conv.models import BACKENDS, MODELS
from custom_conv.training.config import DEFAULTS

# This file is the command line; custom_conv/training/ does the work (its
# __init__.py lists the modules).


def at_least_zero(cast):
    """An argparse type: `cast` of the text, refused when negative."""
    def parse(text):
        value = cast(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
        return value
    parse.__name__ = cast.__name__  # what argparse names in "invalid int value"
    return parse


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
                   help="switch off random augmentation (CIFAR: crops and flips; Fashion-MNIST: 2-pixel "
                        "shifts and flips; MNIST: small shifts and rotations)")
    g.add_argument("--backend", choices=BACKENDS, help="whose conv2d / max_pool2d: custom_conv's (default) or torch's")
    g.add_argument("--pool", choices=("max", "avg"), help=f"LeNet-5's pooling (default {d['pool']})")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int,
                   help=f"default {d['epochs']}; with --resume it may be raised, to train a run (finished or "
                        "not) for more epochs")
    g.add_argument("--batch-size", type=int, help=f"per process (default {d['batch_size']})")
    g.add_argument("--lr", type=float, help=f"peak learning rate (default {d['lr']})")
    g.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), help=f"default {d['optimizer']}")
    g.add_argument("--momentum", type=float, help=f"SGD momentum (default {d['momentum']})")
    g.add_argument("--weight-decay", type=float, help=f"default {d['weight_decay']}")
    g.add_argument("--schedule", choices=("cosine", "step", "constant"),
                   help="learning rate per epoch: cosine to 0 (default), step (x0.1 at 50%% and 75%%), constant. "
                        "When --resume raises --epochs, cosine and step are recomputed over the new total (the "
                        "rate goes back up to where a run of that length would be, then falls to the new end), "
                        "so only constant gives the weights of a run that asked for the new total from the start")
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
    g.add_argument("--resume", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="continue a run from its last checkpoint, with its hyper-parameters, --data-dir, "
                        "--target-acc, --log-every and run directory unless given")
    g.add_argument("--eval-only", action="store_true",
                   help="evaluate the --resume checkpoint on the whole test set (or --limit-batches N of it), "
                        "write eval.json and exit")
    g.add_argument("--limit-batches", type=int, metavar="N",
                   help="at most N batches per epoch and per test (smoke runs; a resumed run keeps it, "
                        "--eval-only does not)")
    g.add_argument("--stop-after", type=int, metavar="K",
                   help="stop after epoch K as if interrupted; --resume continues the run")
    g.add_argument("--target-acc", type=float, metavar="PERCENT",
                   help="report the training time until the test accuracy first reaches PERCENT (default: "
                        + ", ".join(f"{name} {100 * spec.target_acc:g}" for name, spec in DATASETS.items()) + ")")
    g = p.add_argument_group("monitoring")
    g.add_argument("--log-every", type=at_least_zero(int), metavar="N",
                   help=f"TensorBoard: the training loss and learning rate every N optimizer steps, in the "
                        f"run's steps/ directory (default {d['log_every']}; 0: none)")
    g.add_argument("--progress-every", type=at_least_zero(float), metavar="SECONDS",
                   help="when stderr is not a terminal (nohup, CI, cluster jobs): a progress line with loss, "
                        "images/s and ETA every SECONDS of training and testing (default "
                        f"{d['progress_every']:g}; 0: after every batch). On a terminal: a progress bar")
    return p


def parse_args(argv=None):
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    if given.get("pool", "max") != "max" and given.get("model", DEFAULTS["model"]) != "lenet5":
        parser.error("--pool chooses LeNet-5's pooling; the other models have their own")
    return argparse.Namespace(**{**DEFAULTS, **given}), set(given)


def main(argv=None):
    """Trains as the command line `argv` (default sys.argv) asks; returns metrics.json's (or eval.json's) contents."""
    return training.main(*parse_args(argv))


if __name__ == "__main__":
    main()

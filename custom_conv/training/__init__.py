"""train.py's machinery, one module a job; main(args, given) is train.py's whole job.

    config       DEFAULTS, HPARAMS and SETTINGS (what a resumed run keeps), the run directory, metrics.json's config
    distributed  Dist: rank and world size under torchrun (no-ops when alone); the device
    loaders      the datasets of custom_conv.datasets, loaded rank 0 first, in (sharded) DataLoaders
    models       the model of custom_conv.models, its optimizer, schedule and GradScaler
    loop         train_epoch and evaluate (with its confusion matrix)
    progress     within a pass: tqdm's bar on a terminal, else a line every --progress-every seconds
    checkpoints  atomic writes, checkpoint contents, --resume, RNG states
    metrics      stdout lines, metrics.json and eval.json (per-class accuracy, confusion matrix)
    tensorboard  graph, scalars (per epoch, and per step in steps/), histograms, filters, feature maps,
                 confusion matrix, per-class accuracy and hparams
    run          main() and run(): the steps above in order; Trainer: the epochs
    curves       learning-curve pictures from runs' metrics.json (python -m custom_conv.training.curves)
"""
from .config import DEFAULTS, HPARAMS
from .run import main

__all__ = ["DEFAULTS", "HPARAMS", "main"]

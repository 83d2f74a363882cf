"""The batches a process trains and tests on.

The datasets themselves come from custom_conv.datasets; this module loads them
once per job (rank 0 first, as it may download) and wraps them in
DataLoaders, sharded over the processes of a torchrun job.
"""
import sys
from dataclasses import dataclass
from typing import Optional

from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler

from ..datasets import DatasetUnavailable, load_datasets


@dataclass
class Loaders:
    train: DataLoader
    test: DataLoader
    # Under torchrun: the training sampler, whose set_epoch reshuffles; None when alone.
    sampler: Optional[DistributedSampler]


def load_data(args, ddp, log):
    """(train_set, test_set, info) for --dataset; exits with the message when the data is missing.
    info also holds "classes", the class names in label order."""
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
    info["classes"] = class_names(test_set, info["num_classes"])
    return train_set, test_set, info


def class_names(dataset, num_classes):
    """The names of the classes (torchvision's datasets have them), else "0", "1", ..."""
    names = list(getattr(dataset, "classes", None) or [])
    return names if len(names) == num_classes else [str(i) for i in range(num_classes)]


def make_loaders(train_set, test_set, args, ddp, device, generator):
    """Training batches in an order drawn from `generator` (and --seed under torchrun); test batches in order."""
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
    return Loaders(train_loader, test_loader, sampler)

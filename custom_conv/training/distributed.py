"""Where this process runs: its rank in a torchrun job (or alone) and its device.

Every method of Dist is a no-op, or the identity, in a lone process, so the
rest of training is written once for both cases.
"""
import os
import sys

import torch
import torch.distributed as dist

from .._ops import has_cuda_kernels


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

    def close(self):
        if self.enabled:
            dist.destroy_process_group()

    def sum(self, *values, device):
        """Sums numbers over processes (identity when alone)."""
        t = torch.tensor(values, dtype=torch.float64, device=device)
        if self.enabled:
            dist.all_reduce(t)
        return t.tolist()

    def sum_tensor(self, t):
        """Sums the tensor `t` over processes in place (a no-op when alone); returns it."""
        if self.enabled:
            dist.all_reduce(t)
        return t

    def gather(self, obj):
        """Every process's `obj`, in rank order (a one-item list when alone)."""
        if not self.enabled:
            return [obj]
        objs = [None] * self.world_size
        dist.all_gather_object(objs, obj)
        return objs

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def wrap(self, model, device):
        """The module to train: DistributedDataParallel(model) in a job, model itself when alone."""
        if not self.enabled:
            return model
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)


def pick_device(choice, backend, ddp):
    """--device: "auto" takes a GPU when there is one and `backend` has kernels for it."""
    if choice == "auto":
        usable = torch.cuda.is_available() and (backend == "torch" or has_cuda_kernels())
        choice = "cuda" if usable else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            sys.exit("train.py: --device cuda, but torch sees no CUDA GPU")
        return torch.device("cuda", ddp.local_rank)
    return torch.device("cpu")

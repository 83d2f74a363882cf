"""The datasets train.py knows: torchvision's class for each, its shape,
normalisation, and where torchvision looks for its files."""
from dataclasses import dataclass

from torchvision import datasets

__all__ = ["DATASETS", "Spec"]


@dataclass(frozen=True)
class Spec:
    cls: type
    in_channels: int
    num_classes: int
    mean: tuple
    std: tuple
    # Where torchvision looks, relative to the data directory, and what it wants there.
    where: str
    files: str
    # The test accuracy whose first reaching train.py times (--target-acc):
    # a level that a well-trained small model reaches on this dataset.
    target_acc: float


_IDX = ("train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
        "t10k-labels-idx1-ubyte (uncompressed idx files)")

DATASETS = {
    "mnist": Spec(datasets.MNIST, 1, 10, (0.1307,), (0.3081,), "MNIST/raw", _IDX, 0.99),
    "fashion-mnist": Spec(datasets.FashionMNIST, 1, 10, (0.2860,), (0.3530,), "FashionMNIST/raw", _IDX, 0.90),
    "cifar10": Spec(datasets.CIFAR10, 3, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                    "cifar-10-batches-py",
                    "the extracted contents of cifar-10-python.tar.gz (data_batch_1..5, test_batch, batches.meta)",
                    0.90),
    "cifar100": Spec(datasets.CIFAR100, 3, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                     "cifar-100-python",
                     "the extracted contents of cifar-100-python.tar.gz (train, test, meta)", 0.60),
}


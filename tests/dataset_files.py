"""Writes tiny datasets in the exact on-disk formats torchvision reads:
MNIST's big-endian idx files and CIFAR's pickled batches."""
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np


def _idx(path, array):
    # idx header: two zero bytes, a type code (0x08 = unsigned byte), the
    # number of dimensions, then each dimension as a big-endian int32.
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    Path(path).write_bytes(header + array.astype(np.uint8).tobytes())


def digit_images(labels, size=28):
    """Images whose brightness encodes the label, so a pixel tells which item it is."""
    images = np.zeros((len(labels), size, size), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, 4 + label:10 + label, 6:20] = 25 * (label + 1)
        images[i, 0, 0] = i % 256  # a per-item marker
    return images


def write_mnist(root, n_train=64, n_test=32, folder="MNIST"):
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = digit_images(labels)
        _idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        out[prefix] = (images, labels)
    return out


def _md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def write_cifar(root, monkeypatch, classes=10, per_batch=8, n_test=8):
    """CIFAR-10 (5 training batches) or CIFAR-100 (one 'train' file) pickles.

    torchvision checks each file's MD5 against the real dataset's; the class
    attributes holding those sums are pointed at these files instead, so the
    real integrity check still runs.
    """
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if classes == 10 else CIFAR100
    folder = Path(root) / cls.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    label_key = "labels" if classes == 10 else "fine_labels"
    rng = np.random.default_rng(1)
    written = {}

    def batch(name, n):
        # Rows are 3072 bytes: the red plane, then green, then blue, each row-major 32x32.
        data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, classes, n)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, label_key: labels}, f)
        written[name] = (data, labels)
        return [name, _md5(folder / name)]

    if classes == 10:
        train_list = [batch(f"data_batch_{i}", per_batch) for i in range(1, 6)]
        test_list = [batch("test_batch", n_test)]
        meta = {"filename": "batches.meta", "key": "label_names"}
        names = {"label_names": [f"class{i}" for i in range(10)]}
    else:
        train_list = [batch("train", 5 * per_batch)]
        test_list = [batch("test", n_test)]
        meta = {"filename": "meta", "key": "fine_label_names"}
        names = {"fine_label_names": [f"class{i}" for i in range(100)]}
    with open(folder / meta["filename"], "wb") as f:
        pickle.dump(names, f)
    meta["md5"] = _md5(folder / meta["filename"])
    monkeypatch.setattr(cls, "train_list", train_list)
    monkeypatch.setattr(cls, "test_list", test_list)
    monkeypatch.setattr(cls, "meta", meta)
    return written

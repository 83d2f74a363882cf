"""MNIST's idx file format: a big-endian header (two zero bytes, the type
code 0x08 for unsigned bytes, the number of dimensions, each dimension as an
int32), then the values. torchvision reads these files; the package archives
ship the same data as CSV (PyPI) or gzipped idx files (Debian)."""
import gzip
import struct
from pathlib import Path

import numpy as np

# Torchvision's names, under DATA_DIR/MNIST/raw and DATA_DIR/FashionMNIST/raw.
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def decode(data: bytes) -> np.ndarray:
    """The array an idx file holds (unsigned bytes only, as MNIST's are)."""
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError("not an idx file of unsigned bytes")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    values = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if values.size != int(np.prod(dims)):
        raise ValueError(f"idx file of shape {dims} holds {values.size} values")
    return values.reshape(dims)


def read(path) -> np.ndarray:
    """Decodes an idx file, gzipped when its name ends in .gz."""
    data = Path(path).read_bytes()
    return decode(gzip.decompress(data) if str(path).endswith(".gz") else data)


def encode(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) \
        + array.tobytes()


def read_split(folder, split):
    """(images (N, 28, 28), labels (N,)) of 'train' or 'test' from a torchvision raw folder."""
    images, labels = (read(Path(folder) / name) for name in FILES[split])
    return images, labels


def write_split(folder, split, images, labels):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in zip(FILES[split], (images, labels)):
        tmp = folder / f".{name}.partial"
        tmp.write_bytes(encode(array))
        tmp.replace(folder / name)  # never a half-written file under the real name

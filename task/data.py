"""Offline MNIST / Fashion-MNIST loading and the per-UAV partitions.

The original gzip archives are found locally (the bundled copy, or a folder the user
names with ``data-dir``), checked against torchvision's md5 sums, copied into a cache
folder and read with ``torchvision.datasets``. Nothing is ever extracted next to the
archives, so a read-only install works, and nothing touches the network.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Mapping
from contextlib import contextmanager
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import torch
from torchvision import datasets

# Mean and standard deviation of the training images, per dataset (pixel values in [0, 1]).
NORMALISATION = {"mnist": (0.1307, 0.3081), "fashion-mnist": (0.2860, 0.3530)}
TORCHVISION_CLASSES = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}
# Where a non-editable install puts the bundled archives (pyproject [tool.setuptools.data-files]).
INSTALLED_DATA = Path(sys.prefix) / "share" / "sagin-qfl"
SOURCE_DATA = Path(__file__).resolve().parents[1] / "data"
MIN_PARTITION_SIZE = 10
TRAIN_SAMPLES = {"mnist": 60_000, "fashion-mnist": 60_000}
"""Images in each dataset's training split (what the UAVs' partitions divide)."""


class DatasetError(RuntimeError):
    """The dataset files are missing, corrupt, or cannot be partitioned as asked."""


NODE_CONFIG_HINT = (
    'start the SuperNode with --node-config "partition-id=<i> num-partitions=<n>" '
    "(0 <= i < n; optional data-dir=\"<folder with the archives>\")"
)


class NodeConfigError(ValueError):
    """A SuperNode's node config is missing a key or holds a value that is not allowed."""

Partition = tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""One UAV's ``(train_images, train_labels), (val_images, val_labels)``."""


def _node_int(node_config: Mapping[str, object], key: str) -> int:
    if key not in node_config:
        raise NodeConfigError(
            f"node config lacks '{key}' (it has {sorted(node_config) or 'no keys'}); "
            + NODE_CONFIG_HINT
        )
    value = node_config[key]
    # Flower reads "--node-config partition-id=1" as an int; a quoted "1" arrives as text.
    if isinstance(value, bool) or not isinstance(value, int):
        raise NodeConfigError(
            f"node config '{key}' = {value!r} is not an integer; " + NODE_CONFIG_HINT
        )
    return value


def node_partition(node_config: Mapping[str, object]) -> tuple[int, int]:
    """Partition id and count from node config (simulation and deployment alike).

    Raises
    ------
    NodeConfigError
        A key is missing or not an integer, ``num-partitions`` < 1, or ``partition-id``
        is outside ``0 .. num-partitions - 1``; the message says what is allowed.
    """
    partition_id = _node_int(node_config, "partition-id")
    num_partitions = _node_int(node_config, "num-partitions")
    if num_partitions < 1:
        raise NodeConfigError(
            f"node config 'num-partitions' = {num_partitions} is not allowed; use 1 or more"
        )
    if not 0 <= partition_id < num_partitions:
        raise NodeConfigError(
            f"node config 'partition-id' = {partition_id} is outside 0..{num_partitions - 1} "
            f"(num-partitions {num_partitions})"
        )
    return partition_id, num_partitions


def data_partition(node_config: Mapping[str, object], data_partitions: int = 0
                   ) -> tuple[int, int]:
    """The data partition a node trains on and the number of partitions of the split.

    One partition per UAV (:func:`node_partition`) unless run config ``data-partitions``
    is ``P`` > 0: the training split is then cut into ``P`` partitions and the UAV with
    partition id ``i`` holds partition ``i mod P``, so a federation of more UAVs than
    the split can give ``MIN_PARTITION_SIZE`` images each shares partitions.

    Raises
    ------
    NodeConfigError
        As :func:`node_partition`.
    """
    partition_id, num_partitions = node_partition(node_config)
    if data_partitions:
        return partition_id % data_partitions, data_partitions
    return partition_id, num_partitions


def node_data_dir(node_config: Mapping[str, object], run_data_dir: str) -> tuple[str, str]:
    """The data folder this node reads (node config ``data-dir`` wins), and where it was set."""
    if "data-dir" in node_config:
        return str(node_config["data-dir"]), "node config 'data-dir'"
    return run_data_dir, "run config 'data-dir'"


def check_node_setup(dataset: str, run_data_dir: str, node_config: Mapping[str, object],
                     data_partitions: int = 0) -> None:
    """Check a node's partition keys, that its split into partitions is possible, and its
    md5-verified dataset archives, up front.

    A node says this when the ServerApp first asks it which UAV it is, so a bad node
    config, more partitions than the training split can fill, or missing or corrupt
    archives keep the node out (before the first round: stop the run) with the node's
    reason instead of failing every round it is drawn for.

    Raises
    ------
    NodeConfigError, DatasetError
        Naming the bad key or file and what is allowed or expected.
    """
    _partition_id, num_partitions = data_partition(node_config, data_partitions)
    largest = TRAIN_SAMPLES[dataset] // MIN_PARTITION_SIZE
    if num_partitions > largest:
        setting = (f"run config 'data-partitions' = {data_partitions}" if data_partitions
                   else f"node config 'num-partitions' = {num_partitions}")
        raise DatasetError(
            f"{setting}: cannot split {TRAIN_SAMPLES[dataset]} {dataset} training images into "
            f"{num_partitions} partitions of at least {MIN_PARTITION_SIZE}; use at most "
            f"{largest} (with more UAVs, set run config 'data-partitions' and UAVs share "
            "partitions)"
        )
    data_dir, origin = node_data_dir(node_config, run_data_dir)
    verify_archives(dataset, find_archives(dataset, data_dir, origin))


def cache_root() -> Path:
    """Folder that receives the extracted datasets (``$QFL_CACHE_DIR`` overrides it)."""
    if env := os.environ.get("QFL_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sagin-qfl"


def _archive_names(dataset: str) -> list[tuple[str, str]]:
    """(file name, md5) of the dataset's four archives, as torchvision checks them."""
    return list(TORCHVISION_CLASSES[dataset].resources)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _candidate_dirs(dataset: str, data_dir: str) -> list[Path]:
    folder = TORCHVISION_CLASSES[dataset].__name__  # "MNIST" or "FashionMNIST"
    if data_dir:
        base = Path(data_dir).expanduser()
        return [base, base / "raw", base / folder / "raw"]
    roots = [Path(os.environ["QFL_DATA_DIR"])] if os.environ.get("QFL_DATA_DIR") else []
    # A source checkout; the checkout of an editable install (`flwr run` executes a copy
    # of the code under $FLWR_HOME, away from data/); the folder the local SuperLink was
    # started in; then a regular install.
    roots += [SOURCE_DATA, *_editable_checkout_data(), Path.cwd() / "data", INSTALLED_DATA]
    return [root / folder / "raw" for root in roots]


def _editable_checkout_data() -> list[Path]:
    """``<checkout>/data`` of an editable ``pip install -e .``, read from its direct_url.json."""
    try:
        direct_url = json.loads(distribution("sagin-qfl").read_text("direct_url.json") or "{}")
    except PackageNotFoundError:
        return []
    url = direct_url.get("url", "")
    if not url.startswith("file://") or not direct_url.get("dir_info", {}).get("editable"):
        return []
    return [Path(unquote(urlparse(url).path)) / "data"]


def find_archives(
    dataset: str, data_dir: str = "", origin: str = "run config 'data-dir'"
) -> Path:
    """Return the folder that holds the dataset's four gzip archives.

    Parameters
    ----------
    dataset : str
        ``"mnist"`` or ``"fashion-mnist"``.
    data_dir : str
        A folder holding the archives directly, in ``raw/``, or in ``<Class>/raw/``.
        Empty means the bundled MNIST copy.
    origin : str
        Where ``data_dir`` was set, for the error message.
    """
    if dataset not in TORCHVISION_CLASSES:
        raise DatasetError(f"dataset {dataset!r} is not known; use one of {list(NORMALISATION)}")
    names = [name for name, _ in _archive_names(dataset)]
    tried = _candidate_dirs(dataset, data_dir)
    for folder in tried:
        if all((folder / name).is_file() for name in names):
            return folder
    where = f"{origin} = {data_dir!r}: " if data_dir else ""
    raise DatasetError(
        f"{where}the {dataset} archives ({', '.join(names)}) were not found; looked in "
        + ", ".join(str(p) for p in tried)
        + f". Point {origin} at the folder that holds them."
    )


def verify_archives(dataset: str, folder: Path) -> None:
    """Check the md5 sum of each of the dataset's archives in ``folder``.

    Raises
    ------
    DatasetError
        Naming the first archive whose md5 differs, with the md5 found and expected.
    """
    for name, md5 in _archive_names(dataset):
        archive = folder / name
        actual = _md5(archive)
        if actual != md5:
            raise DatasetError(
                f"{archive} is corrupt or not the original file: md5 {actual}, expected {md5}"
            )


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _extract_in_cache(dataset: str, source: Path, train: bool) -> datasets.MNIST:
    """Copy md5-checked archives into the cache and open the split there with torchvision."""
    torchvision_class = TORCHVISION_CLASSES[dataset]
    root = cache_root()
    raw = root / torchvision_class.__name__ / "raw"
    # Several simulated clients start at once: one extracts, the others wait.
    with _locked(root / f".{dataset}.lock"):
        verify_archives(dataset, source)
        for name, md5 in _archive_names(dataset):
            archive = source / name
            cached = raw / name
            if not cached.is_file() or _md5(cached) != md5:
                raw.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_suffix(".part")
                shutil.copyfile(archive, tmp)
                tmp.replace(cached)
        # With md5-matching archives in place, download=True only extracts: no network.
        return torchvision_class(root, train=train, download=True)


@lru_cache(maxsize=4)
def _raw_split(dataset: str, data_dir: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as stored: uint8 images ``(N, 28, 28)`` and int64 labels.

    Cached per process: simulated clients in one Ray worker share one copy. Kept as
    uint8 (47 MB for MNIST's training split, not 188 MB as floats): a machine running
    many SuperNodes holds one copy per ClientApp process.
    """
    split = _extract_in_cache(dataset, find_archives(dataset, data_dir), train)
    return split.data, split.targets.to(torch.int64)


def _normalised(dataset: str, images: torch.Tensor) -> torch.Tensor:
    mean, std = NORMALISATION[dataset]
    return (images.to(torch.float32).div_(255.0).sub_(mean).div_(std)).unsqueeze(1)


def load_split(dataset: str, data_dir: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split as normalised float images ``(N, 1, 28, 28)`` and int64 labels."""
    images, labels = _raw_split(dataset, data_dir, train)
    return _normalised(dataset, images), labels


def partition_indices(
    labels: np.ndarray,
    num_partitions: int,
    partitioning: str,
    alpha: float,
    seed: int,
    min_size: int = MIN_PARTITION_SIZE,
) -> list[np.ndarray]:
    """Split sample indices across UAVs: disjoint, covering all samples, same for a seed.

    ``iid`` shuffles and deals out equal shares. ``dirichlet`` draws, for each class,
    the share of every partition from Dirichlet(alpha) (Hsu et al. 2019,
    arXiv:1909.06335); small alpha gives each UAV few classes. Draws are repeated until
    every partition holds at least ``min_size`` samples.

    Parameters
    ----------
    labels : np.ndarray
        Class label of every sample.
    num_partitions : int
        Number of UAVs.
    partitioning : str
        ``"iid"`` or ``"dirichlet"``.
    alpha : float
        Dirichlet concentration (only for ``"dirichlet"``).
    seed : int
        Seed of the draw.
    min_size : int
        Smallest partition accepted.

    Returns
    -------
    list[np.ndarray]
        Sorted index arrays, one per partition.
    """
    labels = np.asarray(labels)
    if num_partitions < 1 or num_partitions * min_size > len(labels):
        raise DatasetError(
            f"cannot split {len(labels)} samples into {num_partitions} partitions of at least "
            f"{min_size}; use from 1 to {len(labels) // min_size} partitions"
        )
    rng = np.random.default_rng(seed)
    if partitioning == "iid":
        return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), num_partitions)]
    if partitioning != "dirichlet":
        raise DatasetError(f"partitioning {partitioning!r} is not known; use 'iid' or 'dirichlet'")
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _attempt in range(1000):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
        for indices in by_class:
            shares = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(indices)).astype(int)
            for part, chunk in zip(parts, np.split(rng.permutation(indices), cuts), strict=True):
                part.append(chunk)
        merged = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in merged) >= min_size:
            return merged
    raise DatasetError(
        f"dirichlet-alpha={alpha} leaves some of the {num_partitions} partitions with fewer "
        f"than {min_size} samples in 1000 draws; use a larger alpha or fewer partitions"
    )


def load_partition(
    dataset: str,
    data_dir: str,
    partition_id: int,
    num_partitions: int,
    partitioning: str,
    alpha: float,
    seed: int,
    val_fraction: float,
    max_samples: int = 0,
) -> Partition:
    """Return one UAV's ``(train_x, train_y), (val_x, val_y)`` from the training split.

    ``max_samples`` > 0 keeps a seeded random subset of that size (before the
    validation split), for quick runs.
    """
    if not 0 <= partition_id < num_partitions:
        raise DatasetError(
            f"partition-id {partition_id} is outside 0..{num_partitions - 1} "
            f"(num-partitions {num_partitions})"
        )
    images, labels = _raw_split(dataset, data_dir, True)
    parts = _cached_partitions(dataset, data_dir, num_partitions, partitioning, alpha, seed)
    indices = parts[partition_id]
    rng = np.random.default_rng([seed, partition_id])
    indices = rng.permutation(indices)
    if max_samples:
        indices = indices[:max_samples]
    n_val = int(round(len(indices) * val_fraction))
    val, train = indices[:n_val], indices[n_val:]
    return (
        (_normalised(dataset, images[train]), labels[train]),
        (_normalised(dataset, images[val]), labels[val]),
    )


@lru_cache(maxsize=8)
def _cached_partitions(
    dataset: str, data_dir: str, num_partitions: int, partitioning: str, alpha: float, seed: int
) -> list[np.ndarray]:
    _, labels = _raw_split(dataset, data_dir, True)
    return partition_indices(labels.numpy(), num_partitions, partitioning, alpha, seed)


def load_test_set(
    dataset: str, data_dir: str, test_samples: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official test split (10,000 images), or its first ``test_samples``."""
    images, labels = _raw_split(dataset, data_dir, False)
    if test_samples:
        images, labels = images[:test_samples], labels[:test_samples]
    return _normalised(dataset, images), labels

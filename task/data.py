"""Offline MNIST / Fashion-MNIST loading and the per-UAV partitions.

The original gzip archives are found locally (the bundled copy, or a folder the user
names with ``data-dir``) and checked against their md5 sums (:mod:`task.archives`). Each
split is decoded once into an uncompressed file in the cache folder, and a UAV's
partition once into a per-sample assignment file; a ClientApp process (Flower starts one
per message) then memory-maps the split and copies out only its own images. Nothing is
ever written next to the archives, so a read-only install works, and nothing touches the
network. Every cached file's SHA-256 is recorded when it is written and checked again
whenever the file is not the one recorded (another inode, size or time): a damaged or
replaced cache file is rebuilt, never read.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from task.archives import (
    ARCHIVES,
    DatasetError,
    cache_root,
    file_digest,
    file_identity,
    find_archives,
    locked,
    read_idx,
    verify_archives,
)

# Mean and standard deviation of the training images, per dataset (pixel values in [0, 1]).
NORMALISATION = {"mnist": (0.1307, 0.3081), "fashion-mnist": (0.2860, 0.3530)}
MIN_PARTITION_SIZE = 10
IMAGE_SIDE = 28
CACHE_FORMAT = 1
"""Bumped when the layout of the cached files changes: older files are not read."""
TRAIN_SAMPLES = {"mnist": 60_000, "fashion-mnist": 60_000}
"""Images in each dataset's training split (what the UAVs' partitions divide)."""

NODE_CONFIG_HINT = (
    'start the SuperNode with --node-config "partition-id=<i> num-partitions=<n>" '
    "(0 <= i < n; optional data-dir=\"<folder with the archives>\")"
)


class NodeConfigError(ValueError):
    """A SuperNode's node config is missing a key or holds a value that is not allowed."""

class Images:
    """A UAV's images kept as bytes and normalised when indexed.

    ``images[batch]`` (a tensor of indices or a slice) is float32 ``(n, 1, 28, 28)``,
    normalised exactly as :func:`load_split` normalises a whole split; held as uint8, a
    UAV's 18,000 images take 14 MB instead of 56 MB in every ClientApp process.
    """

    def __init__(self, raw: np.ndarray, dataset: str) -> None:
        self.raw = torch.from_numpy(np.ascontiguousarray(raw))
        self.mean, self.std = NORMALISATION[dataset]

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: torch.Tensor | slice) -> torch.Tensor:
        batch = self.raw[index].to(torch.float32)
        return batch.div_(255.0).sub_(self.mean).div_(self.std).unsqueeze(1)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(n, 1, 28, 28)``, the shape of ``images[:]``."""
        return (len(self.raw), 1, *self.raw.shape[1:])


Partition = tuple[tuple[Images, torch.Tensor], tuple[Images, torch.Tensor]]
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


def _manifest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _cached_file_ok(path: Path) -> bool:
    """Whether ``path`` is the file its manifest recorded (identity, else its SHA-256)."""
    try:
        identity, digest = _manifest_path(path).read_text().split("\n")[:2]
        if identity == repr(file_identity(path)):
            return True
        return file_digest(path, "sha256") == digest
    except (OSError, ValueError):
        return False


def _write_cached(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically and record its identity and SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    tmp.write_bytes(payload)
    tmp.replace(path)
    manifest = _manifest_path(path)
    tmp = manifest.with_name(f"{manifest.name}.{os.getpid()}.part")
    tmp.write_text(f"{file_identity(path)!r}\n{hashlib.sha256(payload).hexdigest()}\n")
    tmp.replace(manifest)


def _split_dir(dataset: str) -> Path:
    return cache_root() / f"v{CACHE_FORMAT}" / ARCHIVES[dataset][0]


def _decoded_split(dataset: str, source: Path, train: bool) -> tuple[Path, Path]:
    """The split's images and labels as raw uint8 files in the cache (decoded once)."""
    prefix = "train" if train else "t10k"
    folder = _split_dir(dataset)
    images, labels = folder / f"{prefix}-images.u8", folder / f"{prefix}-labels.u8"
    # Several ClientApp processes start at once: one decodes, the others wait.
    with locked(cache_root() / f".{dataset}.lock"):
        if not (_cached_file_ok(images) and _cached_file_ok(labels)):
            verify_archives(dataset, source)
            decoded_images = read_idx(source / f"{prefix}-images-idx3-ubyte.gz")
            decoded_labels = read_idx(source / f"{prefix}-labels-idx1-ubyte.gz")
            if decoded_images.ndim != 3 or decoded_labels.shape != decoded_images.shape[:1]:
                raise DatasetError(f"the {dataset} {prefix} archives in {source} do not match")
            _write_cached(images, decoded_images.tobytes())
            _write_cached(labels, decoded_labels.tobytes())
    return images, labels


@lru_cache(maxsize=4)
def _split_files(dataset: str, data_dir: str, train: bool) -> tuple[Path, np.ndarray]:
    """One split's decoded image file (uint8 ``(N, 28, 28)``) and its int64 labels.

    Cached per process: simulated clients in one Ray worker share it. The archives are
    found and md5-checked (remembered per file) on every call that is not cached.
    """
    source = find_archives(dataset, data_dir)
    verify_archives(dataset, source)
    images, labels = _decoded_split(dataset, source, train)
    return images, np.fromfile(labels, dtype=np.uint8).astype(np.int64)


def _raw_split(dataset: str, data_dir: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """One split as stored: uint8 images ``(N, 28, 28)`` (memory-mapped) and labels."""
    images, labels = _split_files(dataset, data_dir, train)
    with images.open("rb") as handle:
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    shape = (len(labels), IMAGE_SIDE, IMAGE_SIDE)
    return np.frombuffer(mapping, dtype=np.uint8).reshape(shape), labels


def _read_rows(path: Path, rows: np.ndarray, block_rows: int = 4096) -> np.ndarray:
    """Images ``rows`` of a decoded split file, in that order.

    The file is read in blocks of ``block_rows`` images, in file order, into one reused
    buffer: a UAV's process holds its own images and 3 MiB more, never the whole split
    (a memory map of it would: page faults map whole runs of neighbouring pages).
    """
    row_bytes = IMAGE_SIDE * IMAGE_SIDE
    out = np.empty((len(rows), IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    order = np.argsort(rows, kind="stable")
    wanted = rows[order]
    buffer = np.empty((block_rows, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    with path.open("rb", buffering=0) as handle:
        lo = 0
        while lo < len(wanted):
            first = int(wanted[lo])
            hi = int(np.searchsorted(wanted, first + block_rows))
            handle.seek(first * row_bytes)
            got = handle.readinto(buffer.data.cast("B"))
            if got is None or got < (int(wanted[hi - 1]) - first + 1) * row_bytes:
                raise DatasetError(f"{path} is shorter than its manifest says; delete it")
            out[order[lo:hi]] = buffer[wanted[lo:hi] - first]
            lo = hi
    return out


def _normalised(dataset: str, images: np.ndarray) -> torch.Tensor:
    mean, std = NORMALISATION[dataset]
    tensor = torch.from_numpy(images.astype(np.float32))  # a copy, also of a mapped file
    return tensor.div_(255.0).sub_(mean).div_(std).unsqueeze(1)


def load_split(dataset: str, data_dir: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split as normalised float images ``(N, 1, 28, 28)`` and int64 labels."""
    images, labels = _raw_split(dataset, data_dir, train)
    return _normalised(dataset, images), torch.from_numpy(labels)


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
    images, labels = _split_files(dataset, data_dir, True)
    indices = _cached_partition(
        dataset, data_dir, partition_id, num_partitions, partitioning, alpha, seed
    )
    rng = np.random.default_rng([seed, partition_id])
    indices = rng.permutation(indices)
    if max_samples:
        indices = indices[:max_samples]
    n_val = int(round(len(indices) * val_fraction))
    val, train = indices[:n_val], indices[n_val:]
    return (
        (Images(_read_rows(images, train), dataset), torch.from_numpy(labels[train])),
        (Images(_read_rows(images, val), dataset), torch.from_numpy(labels[val])),
    )


@lru_cache(maxsize=8)
def _assignment(
    dataset: str, data_dir: str, num_partitions: int, partitioning: str, alpha: float, seed: int
) -> np.ndarray:
    """Which partition each training sample belongs to (computed once, then a cached file)."""
    _, labels = _split_files(dataset, data_dir, True)
    alpha_part = f"-a{alpha!r}" if partitioning == "dirichlet" else ""
    path = (_split_dir(dataset) / "partitions"
            / f"{partitioning}-n{num_partitions}{alpha_part}-s{seed}.i32")
    with locked(cache_root() / f".{dataset}.lock"):
        if _cached_file_ok(path) and path.stat().st_size == 4 * len(labels):
            return np.fromfile(path, dtype=np.int32)
        assignment = np.empty(len(labels), dtype=np.int32)
        for part, indices in enumerate(
            partition_indices(labels, num_partitions, partitioning, alpha, seed)
        ):
            assignment[indices] = part
        _write_cached(path, assignment.tobytes())
    return assignment


def _cached_partition(
    dataset: str, data_dir: str, partition_id: int, num_partitions: int, partitioning: str,
    alpha: float, seed: int,
) -> np.ndarray:
    """Sorted training-sample indices of one partition (as :func:`partition_indices`)."""
    assignment = _assignment(dataset, data_dir, num_partitions, partitioning, alpha, seed)
    return np.flatnonzero(assignment == partition_id)


def load_test_set(
    dataset: str, data_dir: str, test_samples: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official test split (10,000 images), or its first ``test_samples``."""
    images, labels = _raw_split(dataset, data_dir, False)
    if test_samples:
        images, labels = images[:test_samples], labels[:test_samples]
    return _normalised(dataset, images), torch.from_numpy(labels)

"""Offline dataset loading, read-only sources, md5 checks and UAV partitions."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from task import data
from task.archives import archive_names, file_digest
from task.data import DatasetError, find_archives, load_split, partition_indices

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BUNDLED = Path(__file__).resolve().parents[1] / "data" / "MNIST" / "raw"


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QFL_CACHE_DIR", str(tmp_path / "cache"))
    data._split_files.cache_clear()
    data._assignment.cache_clear()
    yield tmp_path / "cache"
    data._split_files.cache_clear()
    data._assignment.cache_clear()


@pytest.mark.parametrize(("dataset", "folder"), [("mnist", "MNIST"),
                                                 ("fashion-mnist", "FashionMNIST")])
def test_bundled_archives_are_the_md5_checked_originals(dataset, folder):
    bundled = BUNDLED.parents[1] / folder / "raw"
    for name, md5 in archive_names(dataset):
        assert file_digest(bundled / name) == md5


def test_fashion_mnist_loads_from_the_bundled_copy_with_no_data_dir(fresh_cache):
    assert find_archives("fashion-mnist", "") == BUNDLED.parents[1] / "FashionMNIST" / "raw"
    images, labels = load_split("fashion-mnist", "", False)
    assert images.shape == (10_000, 1, 28, 28) and set(labels.tolist()) == set(range(10))
    assert abs(float(images.mean())) < 0.1  # normalised with Fashion-MNIST's statistics


def test_mnist_loads_offline_from_a_read_only_copy(tmp_path, fresh_cache):
    source = tmp_path / "ro" / "MNIST" / "raw"
    shutil.copytree(BUNDLED, source)
    # Root ignores permission bits, so the check is that nothing is written beside the
    # archives; the mode is still set so a non-root run fails loudly if it tried.
    for path in [*source.iterdir(), source]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    before = sorted(p.name for p in source.iterdir())
    try:
        images, labels = load_split("mnist", str(tmp_path / "ro"), False)
    finally:
        source.chmod(0o755)
    assert images.shape == (10_000, 1, 28, 28) and labels.shape == (10_000,)
    assert sorted(p.name for p in source.iterdir()) == before
    assert (fresh_cache / f"v{data.CACHE_FORMAT}" / "MNIST" / "t10k-images.u8").is_file()
    assert abs(float(images.mean())) < 0.1  # normalised with the training statistics


@pytest.mark.skipif(not (SHARED / "fashion-mnist" / "raw").is_dir(), reason="needs ../shared")
def test_fashion_mnist_through_the_same_path(fresh_cache):
    images, labels = load_split("fashion-mnist", str(SHARED / "fashion-mnist"), False)
    assert images.shape == (10_000, 1, 28, 28) and set(labels.tolist()) == set(range(10))


def test_corrupt_archive_is_refused_with_its_md5(tmp_path, fresh_cache):
    shutil.copytree(BUNDLED, tmp_path / "bad")
    with (tmp_path / "bad" / "t10k-labels-idx1-ubyte.gz").open("r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz is corrupt.*expected ec29"):
        load_split("mnist", str(tmp_path / "bad"), False)


def test_missing_archives_name_the_places_tried(tmp_path):
    with pytest.raises(DatasetError, match="were not found; looked in .*empty"):
        find_archives("mnist", str(tmp_path / "empty"))


@pytest.mark.parametrize("partitioning", ["iid", "dirichlet"])
@pytest.mark.parametrize("num_partitions", [1, 3, 10])
def test_partitions_are_disjoint_covering_and_seeded(partitioning, num_partitions):
    labels = np.random.default_rng(0).integers(0, 10, size=5_000)
    parts = partition_indices(labels, num_partitions, partitioning, alpha=0.5, seed=7)
    merged = np.concatenate(parts)
    assert len(parts) == num_partitions
    assert len(merged) == len(labels) and len(np.unique(merged)) == len(labels)
    again = partition_indices(labels, num_partitions, partitioning, alpha=0.5, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_indices(labels, num_partitions, partitioning, alpha=0.5, seed=8)
    assert num_partitions == 1 or any(
        not np.array_equal(a, b) for a, b in zip(parts, other, strict=True)
    )


def test_small_alpha_skews_labels_more_than_iid():
    labels = np.repeat(np.arange(10), 600)

    def mean_classes_per_partition(parts):
        return np.mean([(np.bincount(labels[p], minlength=10) > 30).sum() for p in parts])

    iid = partition_indices(labels, 10, "iid", 1.0, seed=1)
    skewed = partition_indices(labels, 10, "dirichlet", 0.1, seed=1)
    assert mean_classes_per_partition(iid) == 10
    assert mean_classes_per_partition(skewed) < 6


def test_impossible_split_is_refused():
    with pytest.raises(DatasetError, match="cannot split 50 samples into 10 partitions"):
        partition_indices(np.zeros(50, dtype=int), 10, "iid", 1.0, seed=0)


# --------------------------------------------------------------------------------------
# A SuperNode's node config and data folder, checked before the first round
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("node_config", "message"),
    [
        ({}, "node config lacks 'partition-id' (it has no keys); start the SuperNode with "
             '--node-config "partition-id=<i> num-partitions=<n>"'),
        ({"partition-id": 0}, "node config lacks 'num-partitions' (it has ['partition-id'])"),
        ({"partition-id": "0", "num-partitions": 3}, "'partition-id' = '0' is not an integer"),
        ({"partition-id": 1.5, "num-partitions": 3}, "'partition-id' = 1.5 is not an integer"),
        ({"partition-id": 0, "num-partitions": True}, "'num-partitions' = True is not an integer"),
        ({"partition-id": 0, "num-partitions": 0}, "'num-partitions' = 0 is not allowed; use 1"),
        ({"partition-id": 3, "num-partitions": 3}, "'partition-id' = 3 is outside 0..2"),
        ({"partition-id": -1, "num-partitions": 3}, "'partition-id' = -1 is outside 0..2"),
    ],
)
def test_bad_node_config_is_named_with_what_is_allowed(node_config, message):
    with pytest.raises(data.NodeConfigError) as error:
        data.node_partition(node_config)
    assert message in str(error.value)


def test_node_data_dir_pointing_nowhere_names_the_node_config_key(tmp_path):
    node_config = {"partition-id": 0, "num-partitions": 2, "data-dir": str(tmp_path / "nowhere")}
    with pytest.raises(DatasetError) as error:
        data.check_node_setup("mnist", "", node_config)
    message = str(error.value)
    assert message.startswith(f"node config 'data-dir' = '{tmp_path / 'nowhere'}': the mnist")
    assert "Point node config 'data-dir' at the folder that holds them" in message


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_node_with_a_damaged_archive_is_refused_naming_file_and_md5(tmp_path, damage):
    shutil.copytree(BUNDLED, tmp_path / "raw")
    archive = tmp_path / "raw" / "train-images-idx3-ubyte.gz"
    if damage == "truncate":
        archive.write_bytes(archive.read_bytes()[: 1 << 16])
    else:
        with archive.open("r+b") as handle:
            handle.seek(5000)
            handle.write(b"\xff")
    node_config = {"partition-id": 0, "num-partitions": 2, "data-dir": str(tmp_path)}
    expected = dict(archive_names("mnist"))[archive.name]
    with pytest.raises(DatasetError) as error:
        data.check_node_setup("mnist", "", node_config)
    assert f"{archive} is corrupt or not the original file" in str(error.value)
    assert f"expected {expected}" in str(error.value)


def test_node_with_a_missing_archive_names_the_archives_and_places(tmp_path):
    shutil.copytree(BUNDLED, tmp_path / "raw")
    (tmp_path / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz.*were not found; looked in"):
        data.check_node_setup("mnist", str(tmp_path), {"partition-id": 0, "num-partitions": 1})


def _count_digests(monkeypatch) -> list[str]:
    from task import archives

    calls: list[str] = []
    real = archives.file_digest

    def counting(path, algorithm="md5"):
        calls.append(f"{algorithm}:{Path(path).name}")
        return real(path, algorithm)

    monkeypatch.setattr(archives, "file_digest", counting)
    monkeypatch.setattr(data, "file_digest", counting)
    return calls


def _fresh_process(fresh_cache) -> None:
    """What a new ClientApp process starts with: the files on disk, no in-memory cache."""
    data._split_files.cache_clear()
    data._assignment.cache_clear()


def test_a_second_process_neither_hashes_the_archives_nor_decodes_them_again(
    fresh_cache, monkeypatch
):
    calls = _count_digests(monkeypatch)
    first = data.load_partition("mnist", "", 1, 4, "dirichlet", 0.5, 7, 0.1)
    assert sorted(c for c in calls if c.startswith("md5")) == sorted(
        f"md5:{name}" for name, _ in archive_names("mnist")
    )
    calls.clear()
    _fresh_process(fresh_cache)
    monkeypatch.setattr(data, "read_idx", lambda path: pytest.fail(f"decoded {path} again"))
    second = data.load_partition("mnist", "", 1, 4, "dirichlet", 0.5, 7, 0.1)
    assert calls == []
    for (a, b), (c, d) in zip(first, second, strict=True):
        assert torch.equal(a[:], c[:]) and torch.equal(b, d)


def test_partition_from_the_cache_equals_the_partition_computed_from_the_labels(fresh_cache):
    (train_x, train_y), (val_x, val_y) = data.load_partition(
        "mnist", "", 2, 5, "dirichlet", 0.3, 11, 0.2
    )
    images, labels = load_split("mnist", "", True)
    indices = partition_indices(labels.numpy(), 5, "dirichlet", 0.3, 11)[2]
    indices = np.random.default_rng([11, 2]).permutation(indices)
    n_val = int(round(len(indices) * 0.2))
    val, train = indices[:n_val], indices[n_val:]
    assert torch.equal(train_x[:], images[train]) and torch.equal(train_y, labels[train])
    assert torch.equal(val_x[:], images[val]) and torch.equal(val_y, labels[val])
    # Indexed in batches, as training reads them: the same floats.
    batch = torch.tensor([5, 0, 17])
    assert torch.equal(train_x[batch], images[train][batch])
    assert train_x.shape == (len(train), 1, 28, 28)


@pytest.mark.parametrize("victim", ["train-images.u8", "train-labels.u8", "partition"])
@pytest.mark.parametrize("damage", ["flip", "truncate", "manifest"])
def test_a_damaged_cache_file_is_rebuilt_never_read(fresh_cache, victim, damage):
    expected = data.load_partition("mnist", "", 0, 3, "iid", 1.0, 5, 0.1)
    folder = fresh_cache / f"v{data.CACHE_FORMAT}" / "MNIST"
    path = (next((folder / "partitions").iterdir()) if victim == "partition"
            else folder / victim)
    path = path if path.suffix != ".sha256" else path.with_suffix("")
    stat = path.stat()
    if damage == "flip":
        with path.open("r+b") as handle:
            handle.seek(stat.st_size // 2)
            byte = handle.read(1)
            handle.seek(stat.st_size // 2)
            handle.write(bytes([byte[0] ^ 0xFF]))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # hide the write
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:-100])
    else:
        path.with_name(path.name + ".sha256").write_text("garbage")
    _fresh_process(fresh_cache)
    again = data.load_partition("mnist", "", 0, 3, "iid", 1.0, 5, 0.1)
    for (a, b), (c, d) in zip(expected, again, strict=True):
        assert torch.equal(a[:], c[:]) and torch.equal(b, d)


def test_an_archive_changed_after_its_check_is_checked_again(tmp_path, fresh_cache):
    shutil.copytree(BUNDLED, tmp_path / "raw")
    data.check_node_setup("mnist", str(tmp_path), {"partition-id": 0, "num-partitions": 1})
    archive = tmp_path / "raw" / "t10k-labels-idx1-ubyte.gz"
    stat = archive.stat()
    with archive.open("r+b") as handle:
        handle.seek(200)
        handle.write(b"\x00\x00")
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz is corrupt"):
        data.check_node_setup("mnist", str(tmp_path), {"partition-id": 0, "num-partitions": 1})


def test_a_garbled_record_of_checked_archives_only_means_checking_again(fresh_cache):
    data.check_node_setup("mnist", "", {"partition-id": 0, "num-partitions": 1})
    (fresh_cache / "verified-archives.json").write_text("{not json")
    data.check_node_setup("mnist", "", {"partition-id": 0, "num-partitions": 1})
    assert json.loads((fresh_cache / "verified-archives.json").read_text())


@pytest.mark.slow  # several seconds: left out of the quick tier
def test_the_clientapp_data_path_imports_neither_torchvision_nor_matplotlib(fresh_cache):
    code = (
        "import sys; from task.data import load_partition; "
        "load_partition('mnist', '', 0, 10, 'iid', 1.0, 0, 0.1); "
        "print(sorted(m for m in ('torchvision', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "QFL_CACHE_DIR": str(fresh_cache)})
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.slow  # several seconds: left out of the quick tier
def test_the_idx_reader_gives_what_torchvision_gives(tmp_path, fresh_cache, train):
    from torchvision import datasets

    shutil.copytree(BUNDLED, tmp_path / "MNIST" / "raw")
    reference = datasets.MNIST(tmp_path, train=train, download=True)  # md5-checked, offline
    images, labels = data._raw_split("mnist", "", train)
    assert np.array_equal(images, reference.data.numpy())
    assert np.array_equal(labels, reference.targets.numpy())


# --------------------------------------------------------------------------------------
# More UAVs than the training split can fill: run config data-partitions
# --------------------------------------------------------------------------------------


def test_data_partitions_gives_uav_i_partition_i_mod_p():
    assert data.data_partition({"partition-id": 7, "num-partitions": 10}) == (7, 10)
    assert data.data_partition({"partition-id": 7, "num-partitions": 10}, 3) == (1, 3)
    assert data.data_partition({"partition-id": 9_999, "num-partitions": 10_000}, 1000) == (
        999, 1000)


@pytest.mark.parametrize(
    ("node_config", "data_partitions", "message"),
    [
        ({"partition-id": 0, "num-partitions": 10_000}, 0,
         "node config 'num-partitions' = 10000: cannot split 60000 mnist training images into "
         "10000 partitions of at least 10; use at most 6000 (with more UAVs, set run config "
         "'data-partitions'"),
        ({"partition-id": 0, "num-partitions": 10}, 6001,
         "run config 'data-partitions' = 6001: cannot split 60000 mnist training images"),
    ],
)
def test_a_node_whose_split_cannot_be_filled_says_so_before_training(
    node_config, data_partitions, message
):
    with pytest.raises(DatasetError) as error:
        data.check_node_setup("mnist", "", node_config, data_partitions)
    assert message in str(error.value)


def test_10000_uavs_sharing_1000_partitions_pass_the_node_check():
    data.check_node_setup("mnist", "", {"partition-id": 9_999, "num-partitions": 10_000}, 1000)



def test_uavs_sharing_a_data_partition_hold_the_same_images_and_keep_their_own_id():
    from flwr.app import Context, RecordDict

    from client.app import _local_data
    from task.config import parse_run_config

    config = parse_run_config({}, {"data-partitions": 3, "max-samples-per-client": 20,
                                   "partitioning": "iid"})
    held = {}
    for partition_id in (1, 4, 2):
        context = Context(run_id=1, node_id=partition_id, state=RecordDict(), run_config={},
                          node_config={"partition-id": partition_id, "num-partitions": 6})
        ((images, _labels), _val), own_id = _local_data(config, context)
        held[partition_id] = images[:]
        assert own_id == partition_id  # seeds the UAV's own training
    assert torch.equal(held[1], held[4]) and not torch.equal(held[1], held[2])


@pytest.mark.slow  # several seconds: left out of the quick tier
def test_a_uavs_share_is_read_without_the_whole_split_becoming_resident(fresh_cache):
    env = {**os.environ, "QFL_CACHE_DIR": str(fresh_cache)}
    build = ("from task.data import load_partition; "
             "load_partition('mnist', '', 0, 30, 'iid', 1.0, 0, 0.1)")
    subprocess.run([sys.executable, "-c", build], check=True, env=env)  # a cached split
    code = (
        "import re, torch; from task.data import load_partition\n"
        "def hwm():\n"
        "    text = open('/proc/self/status').read()\n"
        "    return int(re.search(r'VmHWM:\\s+(\\d+)', text).group(1)) / 1024\n"
        "before = hwm()\n"
        "load_partition('mnist', '', 1, 30, 'iid', 1.0, 0, 0.1)\n"
        "print(hwm() - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    # 2,000 images are 1.5 MiB; the split is 45 MiB. Well under it, whatever else moves.
    assert float(out.stdout.strip()) < 20

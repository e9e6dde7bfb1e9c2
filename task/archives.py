"""The MNIST-format gzip archives: where they are, whether they are the originals, and
their contents as numpy arrays, with no torchvision and no network.

The md5 sums are the ones torchvision checks. An archive's check is remembered per file
(device, inode, size, modification and change time; a write to the file, even one that
restores the modification time, changes its change time), so a ClientApp process, which
Flower starts afresh for every message, does not hash 11 MB of archives each time.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

ARCHIVES: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "mnist": ("MNIST", (
        ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    )),
    "fashion-mnist": ("FashionMNIST", (
        ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    )),
}
"""Per dataset: torchvision's folder name and the (file name, md5) of its four archives."""

# Where a non-editable install puts the bundled archives (pyproject [tool.setuptools.data-files]).
INSTALLED_DATA = Path(sys.prefix) / "share" / "sagin-qfl"
SOURCE_DATA = Path(__file__).resolve().parents[1] / "data"
VERIFIED_FILE = "verified-archives.json"


class DatasetError(RuntimeError):
    """The dataset files are missing, corrupt, or cannot be partitioned as asked."""


def cache_root() -> Path:
    """Folder for everything derived from the archives (``$QFL_CACHE_DIR`` overrides it)."""
    if env := os.environ.get("QFL_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sagin-qfl"


def archive_names(dataset: str) -> list[tuple[str, str]]:
    """(file name, md5) of the dataset's four archives."""
    if dataset not in ARCHIVES:
        raise DatasetError(f"dataset {dataset!r} is not known; use one of {list(ARCHIVES)}")
    return list(ARCHIVES[dataset][1])


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """Hex digest of a file (``hashlib`` algorithm name), read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _candidate_dirs(dataset: str, data_dir: str) -> list[Path]:
    folder = ARCHIVES[dataset][0]
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
        Empty means ``$QFL_DATA_DIR/<Class>/raw`` when that is set, else the bundled
        copy (``data/MNIST/raw`` or ``data/FashionMNIST/raw``).
    origin : str
        Where ``data_dir`` was set, for the error message.
    """
    names = [name for name, _ in archive_names(dataset)]
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


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing): one process at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def file_identity(path: Path) -> list[int]:
    """What changes when a file is replaced or written to: device, inode, size, times."""
    stat = path.stat()
    return [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def _read_verified() -> dict[str, list]:
    try:
        found = json.loads((cache_root() / VERIFIED_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _remember_verified(entries: dict[str, list]) -> None:
    root = cache_root()
    try:
        with locked(root / f".{VERIFIED_FILE}.lock"):
            known = {**_read_verified(), **entries}
            tmp = root / f"{VERIFIED_FILE}.{os.getpid()}.part"
            tmp.write_text(json.dumps(known, indent=0, sort_keys=True))
            tmp.replace(root / VERIFIED_FILE)
    except OSError:
        pass  # a read-only cache only means the check is made again next time


def verify_archives(dataset: str, folder: Path) -> None:
    """Check the md5 sum of each of the dataset's archives in ``folder`` (remembered).

    Raises
    ------
    DatasetError
        Naming the first archive whose md5 differs, with the md5 found and expected.
    """
    known = _read_verified()
    checked: dict[str, list] = {}
    for name, md5 in archive_names(dataset):
        archive = (folder / name).resolve()
        identity = [*file_identity(archive), md5]
        if known.get(str(archive)) == identity:
            continue
        actual = file_digest(archive)
        if actual != md5:
            raise DatasetError(
                f"{folder / name} is corrupt or not the original file: md5 {actual}, "
                f"expected {md5}"
            )
        checked[str(archive)] = identity
    if checked:
        _remember_verified(checked)


def read_idx(path: Path) -> np.ndarray:
    """The array in a gzip-compressed IDX file (the MNIST format: big-endian header).

    Raises
    ------
    DatasetError
        If the header is not an unsigned-byte IDX header or the data are short.
    """
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 3:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)):
        raise DatasetError(f"{path} holds {len(raw) - offset} bytes of data, not {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)

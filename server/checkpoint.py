"""Per-round checkpoints of a run, and the checks that decide whether one may be resumed.

After every round (round 0, the initial model, included) the ServerApp writes
``outputs/<run>/checkpoint.pt``: the global arrays, the strategy's state, the round
number, the state of every random number generator the server draws from, the
``metrics.json`` rows so far and the run config. The file is written beside its final
name and renamed over it, so a crash leaves either the previous round's checkpoint or
this round's, never a torn one. It carries the SHA-256 digest of its payload, and a
checkpoint is only resumed when the digest matches, its arrays are finite, its
generator states restore and its rows are those of rounds 0 to its round: a damaged
file stops the run before anything is written.

``--run-config "resume='<run-name>'"`` continues that run from its last complete round.
Clients seed their training from the server round, and the relay's mobility and channel
noise draw from the round too, so with the restored arrays and generator states the
resumed rounds are the same computation as an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord

from task.config import defaults

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 2
"""Format 2: the payload as ``torch.save`` bytes beside their SHA-256 digest."""
RESUME_MAY_DIFFER = (
    "num-server-rounds", "output-dir", "data-dir", "run-name", "resume", "tracking-uri",
)
"""Run config keys a resumed run may set differently from the run it continues.

``num-server-rounds`` may grow (to extend a finished run) but not drop below the rounds
already done; ``output-dir`` and ``data-dir`` say where things are now (the archives are
md5-checked, so a moved copy is the same data); ``run-name`` must be empty or the resumed
run's name; ``tracking-uri`` only says where the run is watched. Every other key
changes the computation, so a difference is refused.
"""


class CheckpointError(RuntimeError):
    """A run cannot be resumed: no such run, no checkpoint, or an incompatible one."""


@dataclass
class Checkpoint:
    """The state of a run after ``server_round`` complete rounds."""

    server_round: int
    arrays: ArrayRecord
    strategy_state: dict[str, Any]
    rng_state: dict[str, Any]
    rows: list[dict[str, Any]]
    run_config: dict[str, Any]


def capture_rng_state() -> dict[str, Any]:
    """The state of Python's ``random`` (Flower's node sampling), NumPy's and torch's
    global generators, as plain values ``torch.load(weights_only=True)`` accepts."""
    # legacy=True is the default; numpy's stubs give the call without it the dict overload.
    state = np.random.get_state(legacy=True)
    # The global generator is always MT19937, whose legacy state is the tuple.
    assert isinstance(state, tuple)
    kind, keys, position, has_gauss, cached_gauss = state
    return {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), position, has_gauss, cached_gauss],
        "torch": torch.get_rng_state(),
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put the generators back in the state :func:`capture_rng_state` saw."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, position, has_gauss, cached_gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss,
                         cached_gauss))
    torch.set_rng_state(state["torch"])


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> Path:
    """Write ``run_dir/checkpoint.pt`` atomically (a temporary file, then a rename)."""
    path = Path(run_dir) / CHECKPOINT_FILE
    payload = {
        "format": FORMAT_VERSION,
        "round": checkpoint.server_round,
        # Cloned tensors own their memory: the saved bytes are exactly the arrays'.
        "arrays": {
            name: torch.from_numpy(array.numpy().copy())
            for name, array in checkpoint.arrays.items()
        },
        "strategy": checkpoint.strategy_state,
        "rng": checkpoint.rng_state,
        "rows": checkpoint.rows,
        "run_config": dict(checkpoint.run_config),
    }
    body = io.BytesIO()
    torch.save(payload, body)
    sealed = {
        "format": FORMAT_VERSION,
        "sha256": hashlib.sha256(body.getvalue()).hexdigest(),
        "payload": body.getvalue(),
    }
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        torch.save(sealed, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """Read ``run_dir/checkpoint.pt`` and check that it can be resumed as it is.

    Raises
    ------
    CheckpointError
        The file is missing, unreadable, of another format version, fails its digest,
        holds non-finite arrays, generator states that do not restore, or rows that are
        not those of rounds 0 to its round; the message names the file.
    """
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(
            f"run folder {run_dir} has no {CHECKPOINT_FILE}: it was not started by this "
            "version or crashed before its initial evaluation; start it again"
        )
    payload = _verified_payload(path)
    try:
        checkpoint = Checkpoint(
            server_round=int(payload["round"]),
            arrays=ArrayRecord(payload["arrays"]),
            strategy_state=dict(payload["strategy"]),
            rng_state=dict(payload["rng"]),
            rows=list(payload["rows"]),
            run_config=dict(payload["run_config"]),
        )
    except Exception as err:  # noqa: BLE001 - any malformed field means "cannot resume"
        raise CheckpointError(f"{path} is malformed ({type(err).__name__}: {err})") from None
    _check_contents(checkpoint, path)
    return checkpoint


def _verified_payload(path: Path) -> dict[str, Any]:
    """The payload of a format-2 checkpoint whose digest matches."""
    try:
        sealed = torch.load(path, weights_only=True)
        version = sealed.get("format") if isinstance(sealed, dict) else None
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"{path} has checkpoint format {version!r}; this version reads format "
                f"{FORMAT_VERSION} (checkpoints that carry a digest of their payload)"
            )
        body, digest = sealed.get("payload"), sealed.get("sha256")
        if not isinstance(body, bytes) or hashlib.sha256(body).hexdigest() != digest:
            raise CheckpointError(
                f"{path} fails its integrity check (the SHA-256 digest of its payload "
                "differs): the file was changed or damaged and cannot be resumed"
            )
        payload = torch.load(io.BytesIO(body), weights_only=True)
    except CheckpointError:
        raise
    # torch.load's unpickler raises many kinds of error for a damaged file.
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path} cannot be read ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} is malformed (payload is a {type(payload).__name__})")
    return payload


def _check_contents(checkpoint: Checkpoint, path: Path) -> None:
    """Refuse arrays that are not finite, generator states that do not restore, and rows
    that are not one per round from 0 to the checkpoint's round."""
    for name, array in checkpoint.arrays.items():
        values = array.numpy()
        if values.dtype.kind in "fc" and not np.isfinite(values).all():
            raise CheckpointError(f"{path}: array {name!r} holds non-finite values")
    rounds = [row.get("round") if isinstance(row, dict) else None for row in checkpoint.rows]
    if rounds != list(range(checkpoint.server_round + 1)):
        raise CheckpointError(
            f"{path}: its metrics rows are for rounds {rounds}, expected 0 to "
            f"{checkpoint.server_round}"
        )
    saved = capture_rng_state()
    try:
        restore_rng_state(checkpoint.rng_state)
    except Exception as err:  # noqa: BLE001 - whatever restoring raises, it cannot resume
        raise CheckpointError(
            f"{path}: its random generator state does not restore ({type(err).__name__}: "
            f"{err})"
        ) from None
    finally:
        restore_rng_state(saved)


def resumable_runs(output_dir: str | Path) -> list[str]:
    """Names of the run folders under ``output_dir`` that hold a checkpoint."""
    base = Path(output_dir).expanduser()
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / CHECKPOINT_FILE).is_file())


def find_run(output_dir: str | Path, name: str) -> Path:
    """The folder of run ``name`` under ``output_dir``, which must hold a checkpoint.

    Raises
    ------
    CheckpointError
        No such folder or no checkpoint in it; the message lists the runs that can be
        resumed.
    """
    base = Path(output_dir).expanduser().resolve()
    run_dir = base / name
    if (run_dir / CHECKPOINT_FILE).is_file():
        return run_dir
    known = resumable_runs(base)
    what = "has no checkpoint" if run_dir.is_dir() else "does not exist"
    raise CheckpointError(
        f"run config 'resume' = {name!r}: {run_dir} {what}; runs that can be resumed in "
        f"{base}: {', '.join(known) if known else '(none)'}"
    )


def check_compatible(
    checkpoint: Checkpoint, run_config: Mapping[str, Any], arrays: ArrayRecord
) -> None:
    """Refuse to resume ``checkpoint`` under a run config or model it was not made with.

    Parameters
    ----------
    checkpoint : Checkpoint
        The checkpoint to continue from.
    run_config : Mapping[str, Any]
        The resumed run's validated config, with run-config key names.
    arrays : ArrayRecord
        The arrays of the model this run config builds.

    Raises
    ------
    CheckpointError
        Naming every differing key with both values (keys of :data:`RESUME_MAY_DIFFER`
        aside), a ``num-server-rounds`` below the rounds done, or the arrays whose names,
        shapes or dtypes differ.
    """
    # A key the checkpoint lacks was added to the project after it was written: the run
    # then ran with that key's default (a new key's default keeps the old behaviour).
    known = defaults()
    saved = {**known, **checkpoint.run_config}
    name = run_config.get("resume", "")
    differing = [
        f"'{key}' = {run_config.get(key)!r} (the checkpoint has {saved.get(key)!r})"
        for key in sorted(set(saved) | set(run_config))
        if key not in RESUME_MAY_DIFFER
        and saved.get(key) != run_config.get(key, known.get(key))
    ]
    if differing:
        raise CheckpointError(
            f"cannot resume run {name!r}: its checkpoint was made with another run config: "
            + "; ".join(differing)
            + ". Resume with the run's original values; only "
            + ", ".join(RESUME_MAY_DIFFER) + " may differ"
        )
    run_name = run_config.get("run-name", "")
    if run_name not in ("", name):
        raise CheckpointError(
            f"run config 'run-name' = {run_name!r} with 'resume' = {name!r}: a resumed run "
            "keeps its name; leave run-name empty or equal to resume"
        )
    rounds = run_config.get("num-server-rounds")
    if rounds is not None and rounds < checkpoint.server_round:
        raise CheckpointError(
            f"run config 'num-server-rounds' = {rounds}: run {name!r} has already completed "
            f"{checkpoint.server_round} rounds; use {checkpoint.server_round} or more"
        )
    expected = {n: (tuple(a.shape), str(a.dtype)) for n, a in arrays.items()}
    found = {n: (tuple(a.shape), str(a.dtype)) for n, a in checkpoint.arrays.items()}
    if expected != found:
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        changed = [
            f"{n}: {found[n][1]}{list(found[n][0])} in the checkpoint, "
            f"{expected[n][1]}{list(expected[n][0])} in the model"
            for n in sorted(set(expected) & set(found)) if expected[n] != found[n]
        ]
        raise CheckpointError(
            f"cannot resume run {name!r}: the checkpoint's arrays do not fit the model "
            f"({run_config.get('model')!r}): missing {missing}, unexpected {extra}"
            + (f", changed {'; '.join(changed)}" if changed else "")
        )

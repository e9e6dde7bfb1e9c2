"""The QKD shared secret, read out of band on each machine; never in run config or a message.

The ``qkd`` channel emulates QKD hardware with a source seeded by a secret that both ends
of a link hold (:class:`relay.bb84.EmulatedQKDSource`). Each end reads it here:

1. the environment variable ``QFL_QKD_SECRET`` (hex, at least 16 bytes) if it is set;
2. otherwise a per-machine file ``<folder>/qkd-secret`` (hex text, mode 0600), created
   once with 32 random bytes from :mod:`secrets` under a file lock.

On one machine (Flower's simulation) the server and every simulated client therefore
read the same file with no setup. In a deployment, copy that file (or set the
environment variable to its content) on every SuperNode and on the SuperLink host.

The secret's value is never logged and never leaves this process in a message; only
:attr:`SharedSecret.source` (where it was read from) may be recorded.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

ENV_VAR = "QFL_QKD_SECRET"
"""Environment variable holding the secret as hex; takes precedence over the file."""

FILE_NAME = "qkd-secret"
"""Name of the per-machine secret file inside the folder given to :func:`load_shared_secret`."""

MIN_SECRET_BYTES = 16
"""Shortest secret accepted (what :class:`relay.bb84.EmulatedQKDSource` requires)."""

NEW_SECRET_BYTES = 32
"""Length of a newly created secret."""


class SecretError(RuntimeError):
    """The shared secret is malformed, too short, or its file is unsafe or unreadable."""


@dataclass(frozen=True)
class SharedSecret:
    """A QKD shared secret and where it came from.

    Attributes
    ----------
    value : bytes
        The secret; left out of ``repr`` so it cannot reach a log by accident.
    source : str
        Where it was read from (safe to log and to record in ``config.json``).
    """

    value: bytes = field(repr=False)
    source: str


def load_shared_secret(folder: str | Path) -> SharedSecret:
    """Read the QKD shared secret from ``$QFL_QKD_SECRET`` or ``<folder>/qkd-secret``.

    Parameters
    ----------
    folder : str or pathlib.Path
        Folder of the per-machine secret file; created if missing.

    Returns
    -------
    SharedSecret

    Raises
    ------
    SecretError
        The variable or file is not hex of at least 16 bytes, or the file can be read by
        other users or cannot be created. The message never contains the secret.
    """
    if (text := os.environ.get(ENV_VAR)) is not None:
        return SharedSecret(_parse(text, f"environment variable {ENV_VAR}"), f"${ENV_VAR}")
    path = Path(folder).expanduser() / FILE_NAME
    try:
        _create_once(path)
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretError(
                f"QKD secret file {path} is accessible by other users "
                f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}`"
            )
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as error:
        raise SecretError(f"QKD secret file {path} cannot be read or created: {error}") from None
    return SharedSecret(_parse(text, f"QKD secret file {path}"), f"file {path}")


def _create_once(path: Path) -> None:
    """Create the secret file unless it exists; concurrent callers wait on a lock."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    with lock.open("a") as handle:
        # Simulated clients start together: one creates the file, the others then read it.
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            if path.exists():
                return
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="ascii") as out:
                out.write(secrets.token_hex(NEW_SECRET_BYTES) + "\n")
                out.flush()
                os.fsync(out.fileno())
            # A reader never sees a half-written file.
            os.replace(tmp, path)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _parse(text: str, where: str) -> bytes:
    try:
        value = bytes.fromhex(text.strip())
    except ValueError:
        # The value itself is never echoed: it may be the secret with a typo.
        raise SecretError(f"{where} is not hexadecimal text") from None
    if len(value) < MIN_SECRET_BYTES:
        raise SecretError(
            f"{where} holds {len(value)} bytes; at least {MIN_SECRET_BYTES} are needed "
            f"({2 * MIN_SECRET_BYTES} hex digits)"
        )
    return value

"""Pre-shared QKD secrets, one per UAV, read out of band; never in run config or a message.

The ``qkd`` channel emulates QKD hardware with a source seeded by a secret that the two
ends of one link hold (:class:`relay.bb84.EmulatedQKDSource`). Every UAV shares its own
secret with the base station, so a captured UAV exposes its own link and nothing else.
A :class:`Keyring` holds them: the base station's holds every UAV's, a UAV's only its own
and refuses to answer for any other.

Where the secrets come from, on each machine:

- **Deployment: one file per UAV.** ``$QFL_QKD_SECRET_DIR`` names a folder of files
  ``qkd-secret-<uav-id>`` (hex text, at least 16 bytes, mode 0600), made by
  ``python -m deploy.certs DIR --qkd-secrets N``. The base station's folder holds every
  UAV's file; a UAV's folder holds its own (a UAV reads no other file, even if present).
- **Simulation only: one master on one machine.** Without ``$QFL_QKD_SECRET_DIR``, each
  UAV's secret is derived (HKDF-SHA256) from a master: ``$QFL_QKD_MASTER_SECRET`` (hex)
  if set, else the file ``<cache folder>/qkd-master-secret``, created once with 32 random
  bytes from :mod:`secrets` under a file lock, mode 0600. Flower's simulation (and a local
  federation of processes) then needs no setup: the ServerApp and every ClientApp read
  the same file. Whoever holds the master holds every UAV's secret, so never copy it to a
  UAV; a UAV's keyring keeps only its own derived secret, never the master.

``$QFL_QKD_SECRET`` (the one network-wide secret of earlier versions) is refused with a
message saying what replaced it. Secret values are never logged and never leave this
process in a message; only :attr:`Keyring.source` (where they were read from) may be.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SECRET_DIR_ENV_VAR = "QFL_QKD_SECRET_DIR"
"""Folder of per-UAV secret files (deployment); when set, no master is used."""

MASTER_ENV_VAR = "QFL_QKD_MASTER_SECRET"
"""Simulation master as hex; takes precedence over the master file."""

LEGACY_ENV_VAR = "QFL_QKD_SECRET"
"""The network-wide secret of earlier versions, refused with a pointer to what replaced it."""

SECRET_FILE_PREFIX = "qkd-secret-"
"""A UAV's secret file is ``qkd-secret-<uav-id>`` (``deploy.certs`` writes the same name)."""

MASTER_FILE_NAME = "qkd-master-secret"
"""The simulation master's file in the cache folder."""

MIN_SECRET_BYTES = 16
"""Shortest secret accepted (what :class:`relay.bb84.EmulatedQKDSource` requires)."""

NEW_SECRET_BYTES = 32
"""Length of a newly created secret."""

_UAV_ID_IN_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DERIVATION_LABEL = b"qfl-relay/qkd/uav-secret/v1|"


class SecretError(RuntimeError):
    """A secret is missing, malformed, too short, or its file is unsafe or unreadable; or a
    UAV's keyring was asked for another UAV's secret."""


class Keyring:
    """The pre-shared QKD secrets one end of the relay holds, by UAV id.

    Parameters
    ----------
    secrets_by_uav : mapping of str to bytes
        Secrets held outright (each at least 16 bytes).
    master : bytes, optional
        Simulation only: derive the secret of any UAV not in ``secrets_by_uav`` from it.
    holder : str, optional
        The UAV this keyring belongs to; it then answers for that UAV only. ``None``: the
        base station, which answers for every UAV it has a secret for.
    source : str
        Where the secrets were read from (safe to log and record; never a secret).
    """

    def __init__(
        self,
        secrets_by_uav: Mapping[str, bytes] | None = None,
        *,
        master: bytes | None = None,
        holder: str | None = None,
        source: str = "given in code",
    ) -> None:
        held = dict(secrets_by_uav or {})
        for uav_id, value in held.items():
            _check_length(value, f"the secret of {uav_id!r}")
        if master is not None:
            _check_length(master, "the master secret")
        if holder is not None and (master is not None or set(held) - {holder}):
            raise ValueError(
                f"a UAV's keyring holds its own secret only: {holder!r} was given "
                + ("a master" if master is not None else f"{sorted(set(held) - {holder})}")
            )
        self._secrets = held
        self._master = master
        self.holder = holder
        self.source = source

    def __repr__(self) -> str:
        whose = "base station" if self.holder is None else f"UAV {self.holder}"
        return f"Keyring({whose}, {len(self._secrets)} secrets held, source={self.source!r})"

    @property
    def uav_ids(self) -> tuple[str, ...]:
        """UAVs whose secret is held outright (a master derives others on demand)."""
        return tuple(sorted(self._secrets))

    def secret_for(self, uav_id: str) -> bytes:
        """The secret this end shares with ``uav_id``.

        Raises
        ------
        SecretError
            This is another UAV's keyring, or no secret for ``uav_id`` is held here.
        """
        if self.holder is not None and uav_id != self.holder:
            raise SecretError(
                f"this end is UAV {self.holder} and holds only its own pre-shared secret, "
                f"not {uav_id}'s: a UAV can neither read nor forge another UAV's link"
            )
        if uav_id in self._secrets:
            return self._secrets[uav_id]
        if self._master is not None:
            return derive_uav_secret(self._master, uav_id)
        raise SecretError(
            f"no pre-shared secret for {uav_id} here ({self.source}); give this end and "
            f"{uav_id} the same file {SECRET_FILE_PREFIX}{uav_id} (python -m deploy.certs)"
        )

    def for_uav(self, uav_id: str) -> Keyring:
        """The keyring UAV ``uav_id`` holds: its own secret only (never a master).

        Raises
        ------
        SecretError
            No secret for ``uav_id`` is held here.
        """
        return Keyring(
            {uav_id: self.secret_for(uav_id)}, holder=uav_id, source=f"{self.source} (for {uav_id})"
        )


def derive_uav_secret(master: bytes, uav_id: str) -> bytes:
    """UAV ``uav_id``'s secret from a simulation master: HKDF-SHA256 with the id as info."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=NEW_SECRET_BYTES,
        salt=None,
        info=_DERIVATION_LABEL + uav_id.encode(),
    ).derive(master)


def secret_file_name(uav_id: str) -> str:
    """``qkd-secret-<uav-id>``; refuses ids that are not safe as a file name.

    Raises
    ------
    SecretError
        The id holds characters other than letters, digits, ``.``, ``_``, ``-``.
    """
    if not _UAV_ID_IN_FILE_NAME.match(uav_id):
        raise SecretError(
            f"UAV id {uav_id!r} cannot name a secret file; per-UAV secret files need ids "
            "of letters, digits, '.', '_' or '-' (at most 128)"
        )
    return SECRET_FILE_PREFIX + uav_id


def load_keyring(cache_folder: str | Path, uav_id: str | None = None) -> Keyring:
    """The keyring of the base station (``uav_id`` None) or of UAV ``uav_id``.

    Parameters
    ----------
    cache_folder : str or pathlib.Path
        Folder of the simulation master file (created if missing and needed).
    uav_id : str, optional
        This end's UAV; ``None`` at the base station.

    Raises
    ------
    SecretError
        ``$QFL_QKD_SECRET`` is set; the secret folder holds no usable file (for a UAV: not
        its own); a secret is not hex of at least 16 bytes; a file can be read by other
        users or cannot be read or created. The message never contains a secret.
    """
    if os.environ.get(LEGACY_ENV_VAR) is not None:
        raise SecretError(
            f"${LEGACY_ENV_VAR} (one secret for the whole network) is no longer read: every "
            f"UAV now has its own. For a simulation set ${MASTER_ENV_VAR} instead; for a "
            f"deployment give each machine its {SECRET_FILE_PREFIX}<uav-id> files "
            f"(python -m deploy.certs DIR --qkd-secrets N) and ${SECRET_DIR_ENV_VAR}"
        )
    if (folder := os.environ.get(SECRET_DIR_ENV_VAR)) is not None:
        return _keyring_from_files(Path(folder).expanduser(), uav_id)
    keyring = _simulation_keyring(Path(cache_folder).expanduser())
    return keyring if uav_id is None else keyring.for_uav(uav_id)


def _keyring_from_files(folder: Path, uav_id: str | None) -> Keyring:
    """Per-UAV files: a UAV reads its own only, the base station every one in ``folder``."""
    if uav_id is not None:
        path = folder / secret_file_name(uav_id)
        if not path.is_file():
            raise SecretError(
                f"UAV {uav_id} has no pre-shared QKD secret: {path} does not exist "
                f"(${SECRET_DIR_ENV_VAR} = {str(folder)!r})"
            )
        return Keyring({uav_id: _read_secret_file(path)}, holder=uav_id, source=f"file {path}")
    if not folder.is_dir():
        raise SecretError(f"${SECRET_DIR_ENV_VAR} = {str(folder)!r} is not a folder")
    paths = sorted(folder.glob(f"{SECRET_FILE_PREFIX}*"))
    if not paths:
        raise SecretError(
            f"no {SECRET_FILE_PREFIX}<uav-id> files in {folder} (${SECRET_DIR_ENV_VAR}); "
            "make them with python -m deploy.certs DIR --qkd-secrets N"
        )
    held = {path.name[len(SECRET_FILE_PREFIX):]: _read_secret_file(path) for path in paths}
    return Keyring(held, source=f"files {SECRET_FILE_PREFIX}<uav-id> in {folder}")


def _simulation_keyring(cache_folder: Path) -> Keyring:
    """Every UAV's secret derived from one master (simulation only; see the module doc)."""
    if (text := os.environ.get(MASTER_ENV_VAR)) is not None:
        master = _parse(text, f"environment variable {MASTER_ENV_VAR}")
        return Keyring(master=master, source=f"simulation only: derived from ${MASTER_ENV_VAR}")
    path = cache_folder / MASTER_FILE_NAME
    try:
        _create_once(path)
    except OSError as error:
        raise SecretError(f"QKD master secret file {path} cannot be created: {error}") from None
    return Keyring(
        master=_read_secret_file(path), source=f"simulation only: derived from file {path}"
    )


def _read_secret_file(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretError(
                f"QKD secret file {path} is accessible by other users "
                f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}`"
            )
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as error:
        raise SecretError(f"QKD secret file {path} cannot be read: {error}") from None
    return _parse(text, f"QKD secret file {path}")


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
    _check_length(value, where)
    return value


def _check_length(value: bytes, where: str) -> None:
    if not isinstance(value, bytes):
        raise SecretError(f"{where} must be bytes")
    if len(value) < MIN_SECRET_BYTES:
        raise SecretError(
            f"{where} holds {len(value)} bytes; at least {MIN_SECRET_BYTES} are needed "
            f"({2 * MIN_SECRET_BYTES} hex digits)"
        )

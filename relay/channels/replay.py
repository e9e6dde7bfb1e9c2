"""Replay memories for channels that authenticate: which envelopes an end has accepted.

A channel asks its memory to :meth:`~ReplayGuard.admit` an envelope once it has
authenticated and opened it; a replay raises :class:`~relay.channels.base.ChannelRejected`.

- :class:`InMemoryReplayGuard` (the base station): the fingerprint of every accepted
  envelope, for the life of the process. The ServerApp is one process for the whole run,
  and a new run (or a resumed one) has a new run id, which every header binds.
- :class:`PersistentReplayGuard` (a UAV): Flower starts a fresh ClientApp process for
  every message, so a memory in the process dies with it and a same-round downlink
  replayed to the next process would be accepted. This one keeps, per header run field
  (``"<run id>/<category>"``, so per message type) and direction, the highest round
  accepted, in a small JSON file ``<state folder>/qkd-replay-<uav-id>.json`` rewritten
  atomically under a file lock; an envelope whose round is not newer is refused. A file
  that cannot be read refuses everything (fail closed) and names itself.
"""

from __future__ import annotations

import abc
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from relay.channels.base import ChannelRejected, Header

STATE_DIR_ENV_VAR = "QFL_STATE_DIR"
"""Overrides the folder of the persistent memories (default ``<cache folder>/state``)."""

MAX_REMEMBERED_STREAMS = 256
"""Streams (run, message type, direction) a persistent memory keeps; the oldest go first.

Only streams of runs long finished are dropped: a UAV takes part in one run at a time."""

_STATE_VERSION = 1


def state_folder(cache_folder: Path) -> Path:
    """Folder of state that outlives one process: ``$QFL_STATE_DIR``, else
    ``<cache_folder>/state``."""
    if env := os.environ.get(STATE_DIR_ENV_VAR):
        return Path(env).expanduser()
    return Path(cache_folder) / "state"


class ReplayGuard(abc.ABC):
    """Accepts each envelope once; see the module doc for the two kinds."""

    @abc.abstractmethod
    def admit(self, header: Header, fingerprint: bytes) -> None:
        """Record an authenticated envelope as accepted, or refuse it as a replay.

        Parameters
        ----------
        header : Header
            The header the envelope was authenticated under.
        fingerprint : bytes
            What makes this envelope unique beyond its header (the channel's nonce).

        Raises
        ------
        ChannelRejected
            The envelope (or, for a persistent memory, a newer one of its stream) was
            already accepted, or the memory cannot be read or written.
        """


class InMemoryReplayGuard(ReplayGuard):
    """Every accepted envelope's fingerprint, for the life of this object."""

    def __init__(self) -> None:
        self._accepted: set[bytes] = set()

    def admit(self, header: Header, fingerprint: bytes) -> None:
        """Refuse an envelope accepted before by this object (header and fingerprint)."""
        key = hashlib.sha256(header.associated_data() + b"|" + fingerprint).digest()
        if key in self._accepted:
            raise ChannelRejected("qkd replay: this envelope was already accepted once")
        self._accepted.add(key)


class PersistentReplayGuard(ReplayGuard):
    """The highest round accepted per stream, in a file that outlives the process.

    Parameters
    ----------
    folder : pathlib.Path
        State folder (created, mode 0700, if missing).
    owner : str
        The UAV whose memory this is: the file is ``qkd-replay-<owner>.json``.
    """

    def __init__(self, folder: Path, owner: str) -> None:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in owner)
        # The owner's name is cleaned for the file system; a digest keeps names distinct.
        suffix = "" if safe == owner else "-" + hashlib.sha256(owner.encode()).hexdigest()[:8]
        self.path = Path(folder) / f"qkd-replay-{safe}{suffix}.json"
        self.owner = owner

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def admit(self, header: Header, fingerprint: bytes) -> None:
        """Refuse an envelope whose round is not newer than its stream's last accepted."""
        stream = f"{header.run_id}|{header.direction}"
        server_round = int(header.server_round)
        try:
            with self._locked():
                state = self._read()
                last = state.get(stream)
                if last is not None and server_round <= last["round"]:
                    raise ChannelRejected(
                        f"qkd replay: round {server_round} of {header.run_id} "
                        f"({header.direction}link) is not newer than round {last['round']}, "
                        f"already accepted here (replay memory {self.path})"
                    )
                state[stream] = {"round": server_round, "at": time.time()}
                self._write(state)
        except OSError as error:
            raise ChannelRejected(
                f"qkd replay memory {self.path} cannot be used: {error}"
            ) from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self.path.with_name(f".{self.path.name}.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        """The streams, or a rejection naming the file when it is damaged (fail closed)."""
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("version") != _STATE_VERSION or data.get("owner") != self.owner:
                raise ValueError("not a replay memory of this version and UAV")
            streams = data["streams"]
            for entry in streams.values():
                if isinstance(entry["round"], bool) or not isinstance(entry["round"], int):
                    raise ValueError("a round is not an integer")
                float(entry["at"])
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as error:
            raise ChannelRejected(
                f"qkd replay memory {self.path} is damaged ({error}); every downlink is "
                "refused until an operator removes it"
            ) from None
        return dict(streams)

    def _write(self, streams: dict[str, Any]) -> None:
        """Replace the file atomically: a reader sees the old content or the new."""
        if len(streams) > MAX_REMEMBERED_STREAMS:
            newest = sorted(streams, key=lambda s: streams[s]["at"])[-MAX_REMEMBERED_STREAMS:]
            streams = {stream: streams[stream] for stream in newest}
        text = json.dumps(
            {"version": _STATE_VERSION, "owner": self.owner, "streams": streams}, indent=1
        )
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)

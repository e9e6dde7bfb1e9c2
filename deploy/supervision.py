"""Which deaths a running federation survives: a SuperNode's, not the SuperLink's.

A UAV that dies is a failed client, not a failed federation. While a run is under way, a
SuperNode that exits for whatever reason (a crash, an operator's ``kill -9``, the OOM
killer, the fault injection of ``up --kill-supernode``) is recorded with how it ended
(exit code or signal), announced, and what is left of its process tree is stopped. The
run goes on: the SuperLink answers the message the dead node never replied to with
Flower's ``Node Unavailable`` error once its heartbeats stop, ``metrics.json`` records
it under ``failed_reasons``, and the round aggregates the others' updates if there are
at least ``min-train-nodes`` of them (else it is skipped).

What stops the federation, with a message naming the process and how it ended:

- the SuperLink exiting, at any time: there is no federation without it;
- the SuperLink's SuperExec exiting (it starts the ServerApp): no run can start or end;
- every SuperNode gone: no UAV is left to train;
- a SuperNode exiting before the run (while ``wait_online`` waits for all of them): the
  federation never was what was asked for.

The ServerApp itself dying is Flower's to notice: the SuperLink misses its heartbeats and
marks the run ``finished:failed`` (``No heartbeat received from the task``), which ends
``flwr run`` and makes ``up`` fail.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from deploy.processes import (
    FederationError,
    ManagedProcess,
    ProcessRef,
    children_map,
    command_line,
    exit_description,
    stop_processes,
)

SUPERLINK = "superlink"
"""Process name of the SuperLink; every other started process is a SuperNode."""
SUPEREXEC_COMMAND = "flower-superexec"
"""What the SuperLink's SuperExec child runs (Flower 1.41's subprocess isolation)."""
TREE_SCAN_SECONDS = 2.0
"""How often the process trees are looked at (one pass over ``/proc`` each time)."""


@dataclass
class Supervisor:
    """Watches a federation's processes: tolerates SuperNode deaths during a run.

    Parameters
    ----------
    processes : list of ManagedProcess
        The federation's started processes (the same list, as it grows).
    expected : list of str
        Names of processes killed on purpose (fault injection): announced by whoever
        killed them, never an error.
    notify : callable, optional
        Called with one line for every SuperNode found dead.
    """

    processes: list[ManagedProcess]
    expected: list[str]
    notify: Callable[[str], None] | None = None
    lost: dict[str, str] = field(default_factory=dict)
    """SuperNodes that died during the run, by name: how they ended."""
    _trees: dict[str, list[ProcessRef]] = field(default_factory=dict)
    _superexec: ProcessRef | None = None
    _scanned: float = float("-inf")

    def check(self, *, running: bool) -> None:
        """Raise :class:`FederationError` unless the federation can go on.

        Parameters
        ----------
        running : bool
            True once the run is submitted: a SuperNode's exit is then recorded in
            :attr:`lost` and announced instead of raised.
        """
        self._scan_trees()
        for process in self.processes:
            if process.name in self.expected or process.name in self.lost:
                continue
            if (code := process.exit_code()) is None:
                continue
            how = exit_description(code)
            if process.name == SUPERLINK or not running:
                role = "the SuperLink" if process.name == SUPERLINK else "a SuperNode"
                raise FederationError(
                    f"{process.name} (pid {process.ref.pid}, {role}) {how}; last lines of "
                    f"{process.log_path}:\n" + process.log_text()[-2000:]
                )
            self._lose(process, how)
        if self._superexec is not None and not self._superexec.running():
            raise FederationError(
                f"the SuperLink's SuperExec (pid {self._superexec.pid}), which starts the "
                "ServerApp, has exited: no run can start or finish without it"
            )
        supernodes = [p.name for p in self.processes if p.name != SUPERLINK]
        gone = [name for name in supernodes if name in self.lost or name in self.expected]
        if running and supernodes and len(gone) == len(supernodes):
            raise FederationError(
                "every SuperNode has exited ("
                + ", ".join(f"{name} {self.lost.get(name, 'killed on purpose')}"
                            for name in gone)
                + "): no UAV is left to train"
            )

    def _lose(self, process: ManagedProcess, how: str) -> None:
        """Record a SuperNode's death, stop what is left of its tree, announce it."""
        self.lost[process.name] = how
        # Its SuperExec and ClientApp outlive it when only the SuperNode was killed.
        orphans = [ref for ref in self._trees.get(process.name, []) if ref.running()]
        left = stop_processes(orphans, grace_seconds=2.0) if orphans else []
        if self.notify is not None:
            self.notify(
                f"{process.name} (pid {process.ref.pid}) {how}; the run goes on without it "
                f"(its message comes back as failed){self._orphans_text(orphans, left)}"
            )

    @staticmethod
    def _orphans_text(orphans: list[ProcessRef], left: list[ProcessRef]) -> str:
        if not orphans:
            return ""
        text = f"; stopped {len(orphans) - len(left)} process(es) it left"
        return text + (f", {len(left)} still running" if left else "")

    def _scan_trees(self) -> None:
        """Remember each process's descendants, and find the SuperLink's SuperExec."""
        if time.monotonic() - self._scanned < TREE_SCAN_SECONDS:
            return
        self._scanned = time.monotonic()
        children = children_map()
        for process in self.processes:
            if process.exit_code() is not None:
                continue  # keep the last tree seen alive: what it leaves behind
            tree = process.ref.descendants(children)
            self._trees[process.name] = tree
            if process.name == SUPERLINK and self._superexec is None:
                self._superexec = next(
                    (ref for ref in tree if SUPEREXEC_COMMAND in command_line(ref.pid)), None
                )

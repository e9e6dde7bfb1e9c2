"""What a UAV's SuperNode needs: seconds per local epoch and peak memory, on this machine.

Run ``python -m benchmarks.edge_client``; it prints one JSON object with two parts.

``in_process``: the default ``hybrid`` model (run config defaults) trained with one torch
thread, as the ClientApp trains it, on partition 0 of 10 IID partitions of the bundled
MNIST with no validation hold-out, i.e. 6,000 images; seconds of each local epoch and
the peak RSS of this process (imports, data and training: what one ClientApp process
holds).

``deployment``: the same training as a real round: ``flower-superlink`` and one
``flower-supernode`` (TLS on) from :mod:`deploy.federation`, under :mod:`deploy.warm`
(``--cold``: without it), one round of one local epoch on the same 6,000 images; the
SuperNode's process tree (the ``deploy.warm`` launcher, ``flower-supernode``, its
``flower-superexec``, the ``warm-shim`` and the ``flwr-clientapp`` process that trains) is
sampled every 0.1 s from ``/proc``: per process the peak RSS (``VmHWM``) and the peak
private memory; for the tree the peak sum of RSS (shared pages counted once per
process) and of PSS (counted once); plus the ``train-seconds`` the ClientApp reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from deploy.federation import LocalFederation
from deploy.processes import ProcessRef
from task.config import parse_run_config
from task.data import load_partition
from task.train import model_from_config, train_local

NUM_PARTITIONS = 10  # 60,000 MNIST training images / 10 = 6,000 per UAV
PARTITION_ID = 0
EDGE_RUN_CONFIG = {"partitioning": "iid", "val-fraction": 0.0}


def measure_in_process(epochs: int) -> dict[str, Any]:
    """Train the default hybrid model ``epochs`` times on a 6,000-image partition.

    Parameters
    ----------
    epochs : int
        Local epochs to time (each one is timed on its own).

    Returns
    -------
    dict
        Images, seconds of each epoch, their mean, and this process's peak RSS in MiB.
    """
    torch.set_num_threads(1)
    rss_mib = {"after_imports": _rss_mib()}
    config = parse_run_config(EDGE_RUN_CONFIG)
    (images, labels), _val = load_partition(
        config.dataset, config.data_dir, PARTITION_ID, NUM_PARTITIONS, config.partitioning,
        config.dirichlet_alpha, config.seed, config.val_fraction,
    )
    rss_mib["after_loading_the_partition"] = _rss_mib()
    model = model_from_config(config)
    seconds = []
    for epoch in range(epochs):
        metrics = train_local(
            model, images, labels, epochs=1, batch_size=config.batch_size,
            learning_rate=config.learning_rate, seed=config.seed + epoch,
        )
        seconds.append(round(metrics["train-seconds"], 2))
    return {
        "model": config.model,
        "images": len(labels),
        "batch_size": config.batch_size,
        "torch_threads": torch.get_num_threads(),
        "epoch_seconds": seconds,
        "seconds_per_epoch": round(sum(seconds) / len(seconds), 2),
        "rss_mib": {**rss_mib, "after_training": _rss_mib()},
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _rss_mib() -> float:
    """Resident set size of this process now, in MiB."""
    return round(_status_kib(os.getpid(), "VmRSS") / 1024, 1)


def _status_kib(pid: int, field: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def _program(pid: int) -> str:
    """``flower-supernode``, ``flower-superexec``, ``flwr-clientapp``, ... of a process.

    Under :mod:`deploy.warm` a ClientApp is a fork of the launcher (its command line is
    the launcher's, its name ``flwr-clientapp``): it counts as ``flwr-clientapp``, the
    launcher as ``deploy.warm`` and the small process the SuperExec started as
    ``warm-shim``.
    """
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"
    args = [arg.decode(errors="replace") for arg in argv if arg]
    if "deploy.warm" in args[:3]:
        return "flwr-clientapp" if comm == "flwr-clientapp" else "deploy.warm"
    if "deploy.pull" in args[:3]:  # flower-supernode with its pull interval
        return "flower-supernode"
    if args[1:2] == ["-IS"] and args[2:3] and Path(args[2]).name == "flwr-clientapp":
        return "warm-shim"
    names = [Path(arg).name for arg in args[:2]]
    flower = [name for name in names if name.startswith(("flower-", "flwr-"))]
    return (flower or names or ["?"])[0]


def _rollup_kib(pid: int, *fields: str) -> int:
    """Sum of ``fields`` of ``/proc/PID/smaps_rollup`` in KiB (0 once the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return sum(int(m.group(2)) for m in re.finditer(r"^([\w]+):\s+(\d+) kB", text, re.M)
               if m.group(1) in fields)


def _private_kib(pid: int) -> int:
    """Memory only this process holds (``Private_Clean`` + ``Private_Dirty``), in KiB."""
    return _rollup_kib(pid, "Private_Clean", "Private_Dirty")


def _pss_kib(pid: int) -> int:
    """Proportional set size (shared pages split among their sharers), in KiB."""
    return _rollup_kib(pid, "Pss")


class TreeSampler(threading.Thread):
    """Samples the memory of a process and its descendants until stopped.

    Per program: the peak ``VmHWM`` (:attr:`peak_by_program`) and the peak private
    memory (:attr:`peak_private_by_program`, what a process holds that no other does);
    for the whole tree, the peak sum of ``VmRSS`` (:attr:`peak_total_kib`, which counts
    pages shared between processes once per process) and of PSS
    (:attr:`peak_pss_total_kib`, which counts them once: the machine's memory in use).
    """

    def __init__(self, root: ProcessRef, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak_by_program: dict[str, int] = {}
        self.peak_private_by_program: dict[str, int] = {}
        self.peak_total_kib = 0
        self.peak_pss_total_kib = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        """Sample until :meth:`stop` (the thread's body)."""
        while not self._stop_event.is_set():
            total = pss_total = 0
            for ref in (self.root, *self.root.descendants()):
                program, hwm = _program(ref.pid), _status_kib(ref.pid, "VmHWM")
                if not hwm:  # gone between listing and reading
                    continue
                self.peak_by_program[program] = max(self.peak_by_program.get(program, 0), hwm)
                private = _private_kib(ref.pid)
                self.peak_private_by_program[program] = max(
                    self.peak_private_by_program.get(program, 0), private
                )
                total += _status_kib(ref.pid, "VmRSS")
                pss_total += _pss_kib(ref.pid)
            self.peak_total_kib = max(self.peak_total_kib, total)
            self.peak_pss_total_kib = max(self.peak_pss_total_kib, pss_total)
            time.sleep(self.interval)

    def stop(self) -> None:
        """End sampling."""
        self._stop_event.set()
        self.join(timeout=5)


def measure_deployment(workdir: Path, *, warm: bool = True) -> dict[str, Any]:
    """One round on one TLS SuperNode holding 6,000 images; memory of its process tree.

    Parameters
    ----------
    workdir : Path
        Work folder of the federation (certificates, logs, outputs).
    warm : bool
        The SuperNode under :mod:`deploy.warm` (default), or Flower's cold ClientApps.

    Returns
    -------
    dict
        Peak RSS per program and of the whole tree in MiB, the ClientApp's
        ``train-seconds`` and the round's wall time.
    """
    run_config = (
        f"num-server-rounds=1 min-train-nodes=1 local-epochs=1 partitioning='iid' "
        f"val-fraction=0.0 test-samples=1000 output-dir='{workdir / 'outputs'}' run-name='edge'"
    )
    with LocalFederation(workdir, warm=warm) as federation:
        federation.prepare()
        federation.start_superlink()
        node = federation.start_supernode(PARTITION_ID, NUM_PARTITIONS)
        federation.wait_online(1)
        sampler = TreeSampler(node.ref)
        sampler.start()
        started = time.perf_counter()
        run_id, status = federation.run(run_config)
        wall = time.perf_counter() - started
        sampler.stop()
        run_log = (federation.logs_dir / "run.log").read_text()
        args = node.popen.args
        assert isinstance(args, list)  # LocalFederation starts processes from lists of str
        supernode_command = " ".join(map(str, args))
    train_seconds = re.findall(r"'train-seconds': ([0-9.e+-]+)", run_log)
    return {
        "clientapps": "warm" if warm else "cold",
        "status": status,
        "supernode_command": supernode_command,
        "peak_rss_mib_by_process": {
            name: round(kib / 1024, 1) for name, kib in sorted(sampler.peak_by_program.items())
        },
        "peak_private_mib_by_process": {
            name: round(kib / 1024, 1)
            for name, kib in sorted(sampler.peak_private_by_program.items())
        },
        "peak_rss_mib_supernode_tree": round(sampler.peak_total_kib / 1024, 1),
        "peak_pss_mib_supernode_tree": round(sampler.peak_pss_total_kib / 1024, 1),
        "train_seconds_reported": float(train_seconds[-1]) if train_seconds else None,
        "run_wall_seconds": round(wall, 1),
        "run_id": run_id,
    }


def main() -> None:
    """Print the measurements as one JSON object."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.edge_client")
    parser.add_argument("--epochs", type=int, default=2, help="epochs timed in process")
    parser.add_argument(
        "--skip-deployment", action="store_true", help="only the in-process measurement"
    )
    parser.add_argument("--cold", action="store_true",
                        help="Flower's own fresh flwr-clientapp per message (no deploy.warm)")
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error(f"--epochs {args.epochs} is not allowed; use 1 or more")
    result: dict[str, Any] = {
        "machine": {
            "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "torch": torch.__version__,
            # Other work on the machine slows the figures down: say how busy it was.
            "load_average_1min_at_start": os.getloadavg()[0],
        },
    }
    if not args.skip_deployment:
        with tempfile.TemporaryDirectory(prefix="qfl-edge-") as workdir:
            result["deployment"] = measure_deployment(Path(workdir), warm=not args.cold)
    result["in_process"] = measure_in_process(args.epochs)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""What a UAV's SuperNode needs: seconds per local epoch and peak memory, on this machine.

Run ``python -m benchmarks.edge_client``; it prints one JSON object with two parts.

``in_process``: the default ``hybrid`` model (run config defaults) trained with one torch
thread, as the ClientApp trains it, on partition 0 of 10 IID partitions of the bundled
MNIST with no validation hold-out, i.e. 6,000 images; seconds of each local epoch and
the peak RSS of this process (imports, data and training: what one ClientApp process
holds).

``deployment``: the same training as a real round: ``flower-superlink`` and one
``flower-supernode`` (TLS on) from :mod:`deploy.federation`, one round of one local
epoch on the same 6,000 images; the SuperNode's process tree (``flower-supernode``, its
``flower-superexec`` and the ``flwr-clientapp`` process that trains) is sampled every
0.1 s from ``/proc``: peak RSS of each process (``VmHWM``) and the peak of their sum; plus
the ``train-seconds`` the ClientApp reported.
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
    """``flower-supernode``, ``flower-superexec``, ``flwr-clientapp``, ... of a process."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    names = [Path(arg.decode()).name for arg in argv[:2] if arg]
    flower = [name for name in names if name.startswith(("flower-", "flwr-"))]
    return (flower or names or ["?"])[0]


class TreeSampler(threading.Thread):
    """Samples the RSS of a process and its descendants until stopped."""

    def __init__(self, root: ProcessRef, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak_by_program: dict[str, int] = {}
        self.peak_total_kib = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        """Sample until :meth:`stop` (the thread's body)."""
        while not self._stop_event.is_set():
            total = 0
            for ref in (self.root, *self.root.descendants()):
                program, hwm = _program(ref.pid), _status_kib(ref.pid, "VmHWM")
                if not hwm:  # gone between listing and reading
                    continue
                self.peak_by_program[program] = max(self.peak_by_program.get(program, 0), hwm)
                total += _status_kib(ref.pid, "VmRSS")
            self.peak_total_kib = max(self.peak_total_kib, total)
            time.sleep(self.interval)

    def stop(self) -> None:
        """End sampling."""
        self._stop_event.set()
        self.join(timeout=5)


def measure_deployment(workdir: Path) -> dict[str, Any]:
    """One round on one TLS SuperNode holding 6,000 images; memory of its process tree.

    Parameters
    ----------
    workdir : Path
        Work folder of the federation (certificates, logs, outputs).

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
    with LocalFederation(workdir) as federation:
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
        "status": status,
        "supernode_command": supernode_command,
        "peak_rss_mib_by_process": {
            name: round(kib / 1024, 1) for name, kib in sorted(sampler.peak_by_program.items())
        },
        "peak_rss_mib_supernode_tree": round(sampler.peak_total_kib / 1024, 1),
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
            result["deployment"] = measure_deployment(Path(workdir))
    result["in_process"] = measure_in_process(args.epochs)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""What decides a run's last digits: the machine, the kernels and the library versions.

A run repeats bit for bit on the same machine in the same environment (seeded draws, one
torch thread per app). On another machine the same seeds give results that differ in the
last digits, and then in more as training amplifies them: torch picks its CPU kernels by
the instruction set it finds (``torch.backends.cpu.get_cpu_capability()``, overridden by
``ATEN_CPU_CAPABILITY``), NumPy's OpenBLAS picks its own (``DYNAMIC_ARCH``, overridden by
``OPENBLAS_CORETYPE``), and thread counts and library versions change summation orders.
:func:`run_environment` records all of these in ``config.json`` (key ``environment``).
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import torch

THREAD_VARIABLES = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
    "ATEN_CPU_CAPABILITY", "OPENBLAS_CORETYPE", "MKL_ENABLE_INSTRUCTIONS",
)
"""Environment variables that set thread counts or kernel choices, recorded when set."""

PACKAGES = ("pennylane", "flwr")
"""Versions read from package metadata (PennyLane is not imported); torch's and NumPy's
are the loaded modules' own."""


def _cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _openblas() -> dict[str, Any]:
    """NumPy's OpenBLAS: its kernel family and thread count, asked of the loaded library
    (``None`` where it cannot be found, e.g. another BLAS or no ``/proc``)."""
    found: dict[str, Any] = {"library": None, "corename": None, "threads": None}
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = [line.split()[-1] for line in maps if "openblas" in line.lower()]
        library = ctypes.CDLL(paths[0])
    except (OSError, IndexError):
        return found
    found["library"] = os.path.basename(paths[0])
    # NumPy's wheels ship OpenBLAS with prefixed, 64-bit-integer symbol names.
    for prefix, suffix in (("scipy_openblas_", "64_"), ("openblas_", ""), ("openblas_", "64_")):
        corename = getattr(library, f"{prefix}get_corename{suffix}", None)
        threads = getattr(library, f"{prefix}get_num_threads{suffix}", None)
        if corename is not None and threads is not None:
            corename.restype = ctypes.c_char_p
            found["corename"] = corename().decode()
            found["threads"] = int(threads())
            break
    return found


def run_environment() -> dict[str, Any]:
    """What decides the last digits of this process's results, for ``config.json``.

    Returns
    -------
    dict
        ``cpu_model``, ``cpu_count``, ``torch_cpu_capability`` (the instruction set of
        torch's kernels), ``torch_threads`` and ``torch_interop_threads``, ``numpy_blas``
        (OpenBLAS kernel family and threads), ``thread_variables`` (those of
        :data:`THREAD_VARIABLES` that are set), ``versions`` (Python, torch, NumPy and
        :data:`PACKAGES`), ``platform`` and ``machine``.
    """
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "numpy_blas": _openblas(),
        "thread_variables": {
            name: os.environ[name] for name in THREAD_VARIABLES if name in os.environ
        },
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "numpy": np.__version__,
            **{name: _package_version(name) for name in PACKAGES},
        },
        "platform": platform.platform(),
        "machine": platform.machine(),
    }

"""What a benchmark's JSON says about the machine it ran on, and how busy it was."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from typing import Any


def machine_record(load_at_start: Sequence[float]) -> dict[str, Any]:
    """CPUs, platform and the load average at the start and now (1, 5, 15 min)."""
    return {
        "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in load_at_start],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }

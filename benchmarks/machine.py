"""What the benchmarks print about the machine they ran on (they compare figures within one run)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name as lscpu prints it (else /proc/cpuinfo, else 'unknown')."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine_line() -> str:
    """The CPU model, the cores this process may use, and the load average now."""
    return f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f}"

"""What the benchmarks print about the machine they ran on (they compare figures within one run)."""

from __future__ import annotations

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

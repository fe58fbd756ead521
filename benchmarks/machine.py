"""The machine a benchmark ran on, as one line for docs/benchmarks.md."""

from __future__ import annotations

import os
import platform

import numpy as np


def processor_name() -> str:
    """The CPU model, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """``machine: <node>, <N> cores, <CPU>, <OS>, Python <v>, numpy <v>``."""
    return (f"machine: {platform.node()}, {os.cpu_count()} cores, {processor_name()}, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"numpy {np.__version__}")

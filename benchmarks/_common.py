"""What the benchmarks share: timing by the median of repeats, the facts of the machine, writing the JSON.

The benchmarks run as scripts (`.venv/bin/python benchmarks/bench_x.py`), so this folder is on sys.path and
they import this module as `_common`.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def seconds(function: Callable[[], Any], repeats: int) -> tuple[float, list[float], Any]:
    """(median seconds, every run's seconds, the last run's result) of `repeats` calls of `function`."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def machine(load: float) -> dict[str, Any]:
    """The facts every result records: the 1-minute load average before the run, CPUs, versions."""
    return {
        "load_average_before": load,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def write_results(path: Path, result: dict[str, Any]) -> None:
    """Write `result` as indented JSON to `path`, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")

"""The machine a benchmark runs on: its memory, CPU and software, as a report records them."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from .._extension import build_info
from .._version import __version__


def _available_memory(device: str) -> int:
    """What one implementation may use: most of the free GPU memory, or half the free RAM on
    the CPU (the timed call runs here while a probe child holds its own copy)."""
    if torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(0.9 * free)
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return int(0.5 * info["MemAvailable"])
    except (OSError, KeyError, ValueError):
        return 8 << 30


def environment(device: str) -> dict:
    """The machine and software a report was measured with."""
    dev = torch.device(device)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    try:
        with open("/proc/meminfo") as f:
            total = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        total = None
    return {
        "affext": __version__,
        "build": build_info(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": gpu,
        "dtype": "float32",
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "memory_total_bytes": total,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_record(path: str | os.PathLike, setting: dict, device: str = "cpu", **results) -> None:
    """A benchmark script's JSON file: {"setting": setting, "environment":
    environment(device), **results}, indented."""
    record = {"setting": setting, "environment": environment(device), **results}
    Path(path).write_text(json.dumps(record, indent=2) + "\n")

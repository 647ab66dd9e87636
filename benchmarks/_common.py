"""Helpers the benchmark scripts share: a child process with its own peak memory, and the machine's description."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from typing import IO, Any

import torch


def run_measured(cmd: Sequence[str], stdout: int | IO | None = None, **popen_kwargs: Any) -> tuple[int, float, str]:
    """
    Run ``cmd`` to the end; its exit code, its own peak resident memory (MiB) and, with ``stdout=PIPE``, its output.

    The peak is ``ru_maxrss`` of this child from ``os.wait4`` (not ``RUSAGE_CHILDREN``, which is the maximum over
    every child so far), so each measurement gets the memory of its own process, interpreter and imports included.
    """
    proc = subprocess.Popen(list(cmd), stdout=stdout, text=True, **popen_kwargs)
    out = ""
    if stdout == subprocess.PIPE:
        out = proc.stdout.read()
        proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    peak = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)  # bytes on macOS, KiB on Linux
    return proc.returncode, peak, out


def environment_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Versions of the libraries and tools, the CPU and the device a benchmark ran on."""

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    device = torch.device(device)
    return {
        "torch": torch.__version__, "monai": version("monai"), "pytorch-ignite": version("pytorch-ignite"),
        "antspyx": version("antspyx"), "itk": version("itk"), "itk-elastix": version("itk-elastix"),
        "python": platform.python_version(), "cpu_count": os.cpu_count(), "cpu": cpu, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
    }  # fmt: skip

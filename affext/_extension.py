"""Loads the compiled kernels (affext._C) and describes how they were built."""

from __future__ import annotations

import platform

import torch

try:
    from . import _C  # type: ignore[attr-defined]  # the compiled module: no stubs
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "affext's compiled kernels (affext._C) could not be loaded: build them with "
        "`pip install --no-build-isolation -e .` in the affext checkout, against the torch "
        f"installed here ({torch.__version__}). Cause: {exc}"
    ) from exc


def build_info() -> dict:
    """How the kernels were built, and what this process can run them on.

    Keys: "cuda" (CUDA kernels compiled), "cuda_version" (CUDA of the torch built against),
    "cuda_arch" (compute capabilities compiled to machine code, e.g. ["7.5", "9.0"]),
    "cuda_ptx" (those also embedded as PTX, which the driver compiles for newer GPUs),
    "openmp", "torch" (version built against), "torch_runtime" (version imported now),
    "cuda_available" (a GPU is usable now), "threads", "machine".
    """
    # TORCH_CUDA_ARCH_LIST's syntax: "7.5;8.0;9.0+PTX" (also commas or spaces)
    entries = _C.cuda_arch.replace(",", " ").replace(";", " ").split()
    return {
        "cuda": bool(_C.cuda),
        "cuda_version": _C.cuda_version,
        "cuda_arch": [e.removesuffix("+PTX") for e in entries],
        "cuda_ptx": [e.removesuffix("+PTX") for e in entries if e.endswith("+PTX")],
        "openmp": bool(_C.openmp),
        "torch": _C.torch,
        "torch_runtime": torch.__version__,
        "cuda_available": bool(_C.cuda) and torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
    }

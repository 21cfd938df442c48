"""Loads the compiled kernels (affext/_C*.so) and describes how they were built.

The library is built against PyTorch's stable ABI (one build serves every torch from the one it
targets on, and, tagged abi3, every CPython >= 3.10): it is no Python module, only a library
whose static initialisers register the ops under torch.ops.affext, loaded with
torch.ops.load_library.
"""

from __future__ import annotations

import importlib.machinery
import platform
from pathlib import Path

import torch


def _library_path() -> Path:
    """The compiled library next to this file: _C.abi3.so (the build's name), else the name of
    a build for this interpreter only."""
    here = Path(__file__).parent
    suffixes = [".abi3.so"] + [s for s in importlib.machinery.EXTENSION_SUFFIXES if s != ".abi3.so"]
    for suffix in suffixes:
        path = here / f"_C{suffix}"
        if path.is_file():
            return path
    raise OSError(f"no _C library ({', '.join('_C' + s for s in suffixes)}) in {here}")


def _load() -> None:
    try:
        torch.ops.load_library(str(_library_path()))
    except OSError as exc:  # pragma: no cover - exercised only on a broken install
        raise ImportError(
            "affext's compiled kernels (affext/_C*.so) could not be loaded: build them with "
            "`pip install --no-build-isolation -e .` in the affext checkout, or install a wheel "
            f"built for this platform and a torch >= 2.13 (torch here: {torch.__version__}). "
            f"Cause: {exc}"
        ) from exc


_load()


def _library_build_info() -> dict[str, str]:
    """The library's own record of its build (the build_info op's "key=value" lines)."""
    lines = torch.ops.affext.build_info().splitlines()
    return dict(line.split("=", 1) for line in lines)


def kernel_neighborhood_offsets(radius: int) -> list[tuple[int, int]]:
    """The kernels' own (dy, dx) offsets of radius (a test ties them to affext.neighborhood)."""
    flat = torch.ops.affext.neighborhood_offsets(radius)
    return list(zip(flat[0::2], flat[1::2]))


def build_info() -> dict:
    """How the kernels were built, and what this process can run them on.

    Keys: "cuda" (CUDA kernels compiled), "cuda_version" (CUDA of the torch built against),
    "cuda_arch" (compute capabilities compiled to machine code, e.g. ["7.5", "9.0"]),
    "cuda_ptx" (those also embedded as PTX, which the driver compiles for newer GPUs),
    "openmp", "torch" (version built against), "torch_runtime" (version imported now),
    "cuda_available" (a GPU is usable now), "threads", "machine".
    """
    info = _library_build_info()
    cuda = info["cuda"] == "1"
    # TORCH_CUDA_ARCH_LIST's syntax: "7.5;8.0;9.0+PTX" (also commas or spaces)
    entries = info["cuda_arch"].replace(",", " ").replace(";", " ").split()
    return {
        "cuda": cuda,
        "cuda_version": info["cuda_version"] if cuda else None,
        "cuda_arch": [e.removesuffix("+PTX") for e in entries],
        "cuda_ptx": [e.removesuffix("+PTX") for e in entries if e.endswith("+PTX")],
        "openmp": info["openmp"] == "1",
        "torch": info["torch"],
        "torch_runtime": torch.__version__,
        "cuda_available": cuda and torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
    }

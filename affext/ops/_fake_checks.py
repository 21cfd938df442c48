"""The launchers' argument checks (csrc/common/stable.h), for the fake kernels and the eager calls.

Each raises what its C++ counterpart raises (ValueError for shapes and values, TypeError for
dtypes), so that a bad input fails alike eagerly and under FakeTensorMode / torch.compile;
every message names the argument. Conditions may be symbolic (torch._check_value takes a
SymBool).
"""

from __future__ import annotations

import torch

from ..neighborhood import neighborhood_offsets


def check_dim(name: str, t: torch.Tensor, dim: int, shape: str) -> None:
    torch._check_value(t.dim() == dim, lambda: f"{name} must have shape {shape}, got {t.shape}")


def check_floating(name: str, t: torch.Tensor) -> None:
    torch._check_type(
        t.dtype.is_floating_point, lambda: f"{name} must be a floating-point tensor, got {t.dtype}"
    )


def check_cpu_dtype(name: str, t: torch.Tensor) -> None:
    """float32 or float64 on the CPU (the kernels that take half dtypes on CUDA only)."""
    torch._check_type(
        t.device.type != "cpu" or t.dtype in (torch.float32, torch.float64),
        lambda: f"on the CPU {name} must be float32 or float64, got {t.dtype}",
    )


def check_integer(name: str, t: torch.Tensor) -> None:
    torch._check_type(
        not t.dtype.is_floating_point and not t.dtype.is_complex and t.dtype != torch.bool,
        lambda: f"{name} must be an integer tensor, got {t.dtype}",
    )


def check_map_size(name: str, h, w, radius: int) -> None:
    """At least one pixel of psa's from-region: H >= r, W >= 2r - 1."""
    torch._check_value(
        h >= radius and w >= 2 * radius - 1,
        lambda: (
            f"{name} is {h}x{w} but radius {radius} needs a map of at least "
            f"{radius}x{2 * radius - 1}"
        ),
    )


def check_offsets(name: str, t: torch.Tensor, radius: int) -> int:
    """t's dim 1 holds the K offsets of radius; returns K."""
    k = len(neighborhood_offsets(radius))
    torch._check_value(
        t.shape[1] == k, lambda: f"{name} has {t.shape[1]} offsets but radius {radius} has K = {k}"
    )
    return k


def check_agree(a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor) -> None:
    """Two (B, ., H, W) tensors agree in batch and map size."""
    torch._check_value(
        a.shape[0] == b.shape[0] and a.shape[2] == b.shape[2] and a.shape[3] == b.shape[3],
        lambda: (
            f"{a_name} {tuple(a.shape)} and {b_name} {tuple(b.shape)} must agree in batch "
            "and map size (B, ., H, W)"
        ),
    )

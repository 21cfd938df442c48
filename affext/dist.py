"""Several processes, on one machine or many, on PyTorch's own engine (torch.distributed).

`torchrun --nproc_per_node N -m affext run ...` starts N copies of affext with RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in their environment; the first helper
called here joins them into one process group: NCCL when CUDA is there (each process on the
GPU of its local rank), gloo on CPUs. Launched any other way, everything here is a no-op for
a single process: rank 0 of a world of 1.

What the stages use: `rank`, `world`, `is_main` (rank 0 writes the shared files: configs,
checkpoints, metrics), `barrier`, `shard` (a deterministic share of an id list), `mean`
(averaged numbers for logs), `device` (the device of this local rank) and `GlobalBatchNorm`
(BatchNorm over the global batch, so that N processes train what one would).

A rank that fails exits non-zero and torchrun stops the others (its default: no restarts);
a rank that dies silently (SIGKILL, a lost node) makes the others' next collective fail, at
the latest after the process group's timeout (AFFEXT_DIST_TIMEOUT seconds, default 1800).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as td
from torch import nn

T = TypeVar("T")

TIMEOUT_ENV = "AFFEXT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800


def launched() -> bool:
    """True in a process torchrun (or another launcher setting WORLD_SIZE and RANK) started."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def setup() -> bool:
    """Join the process group torchrun's environment describes, once; True when this process
    is one of several. NCCL where CUDA is available (the GPU of LOCAL_RANK made current, so
    that "cuda" and "auto" devices mean it), else gloo."""
    if td.is_available() and td.is_initialized():
        return td.get_world_size() > 1
    if not launched() or not td.is_available():
        return False
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        td.init_process_group("nccl", timeout=timeout, device_id=device())
    else:
        td.init_process_group("gloo", timeout=timeout)
    return td.get_world_size() > 1


def cleanup() -> None:
    """Leave the process group (at the end of a command), if this process joined one."""
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def world() -> int:
    """The number of processes (1 when not launched distributed)."""
    return td.get_world_size() if setup() else 1


def rank() -> int:
    """This process's global rank (0 when not launched distributed)."""
    return td.get_rank() if setup() else 0


def local_rank() -> int:
    """This process's rank on its machine (torchrun's LOCAL_RANK; 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """True on rank 0, the process that writes the files every rank shares."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op for one process)."""
    if setup():
        td.barrier()


def device() -> torch.device:
    """This local rank's device: cuda:LOCAL_RANK where CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def _comm_device() -> torch.device:
    return device() if td.get_backend() == "nccl" else torch.device("cpu")


def broadcast(obj: T) -> T:
    """Rank 0's `obj` on every rank (a picklable value)."""
    if not setup():
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=0, device=_comm_device())
    return box[0]


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of `items`: every world-th item from its rank on, of rank 0's list.

    Every rank calls it with the list it computed (the ids still to do, say); rank 0's list is
    shared first, so the shares do not overlap and cover it even when the others listed the
    folder a moment apart. One process: the whole list.
    """
    if not setup():
        return list(items)
    return list(broadcast(list(items)))[rank() :: world()]


def mean(values: dict[str, float]) -> dict[str, float]:
    """The mean over ranks of each value (the same keys on every rank)."""
    if not setup() or not values:
        return dict(values)
    keys = list(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_comm_device())
    td.all_reduce(t)
    return {k: v / world() for k, v in zip(keys, t.tolist())}


class _AllSum(torch.autograd.Function):
    """y = sum over ranks of x on every rank; dL/dx = sum over ranks of dL/dy (each rank's
    y feeds its own loss, and the losses add up)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        td.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        g = grad.clone()
        td.all_reduce(g)
        return g


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of `t`, differentiable (the gradient is summed back over ranks)."""
    if not setup():
        return t
    return _AllSum.apply(t)


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch, all ranks
    together, so that N processes with B / N images each normalise, and update the running
    statistics, exactly as one process with B images (as torch's SyncBatchNorm does on GPUs;
    this one also runs on gloo and CPUs). Mean, then variance around it, two all-reduces a
    layer; gradients flow back through them. In eval mode, or for one process, it is
    BatchNorm2d.

    `use_global_batch_norm` turns a model's BatchNorm2d layers into these in place (same
    parameters, buffers and state-dict keys) and `use_local_batch_norm` turns them back.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.track_running_stats) or world() == 1:
            return super().forward(x)
        self._check_input_dim(x)
        dims = (0, 2, 3)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        packed = all_sum(torch.cat([x.sum(dims), count]))
        n = packed[-1].detach()
        mean = packed[:-1] / n
        centred = x - mean[None, :, None, None]
        var = all_sum((centred * centred).sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = (
                self.momentum
                if self.momentum is not None
                else 1.0 / float(self.num_batches_tracked)
            )
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            unbiased = var.detach() * (n / (n - 1).clamp(min=1))
            self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        return y


def use_global_batch_norm(model: nn.Module) -> int:
    """Make model's BatchNorm2d layers GlobalBatchNorm in place; the number changed."""
    changed = 0
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = GlobalBatchNorm
            changed += 1
    return changed


def use_local_batch_norm(model: nn.Module) -> None:
    """Undo use_global_batch_norm."""
    for m in model.modules():
        if type(m) is GlobalBatchNorm:
            m.__class__ = nn.BatchNorm2d


__all__ = [
    "GlobalBatchNorm",
    "all_sum",
    "barrier",
    "broadcast",
    "cleanup",
    "device",
    "is_main",
    "launched",
    "local_rank",
    "mean",
    "rank",
    "setup",
    "shard",
    "use_global_batch_norm",
    "use_local_batch_norm",
    "world",
]

"""The training loop in N processes (torchrun, affext.dist): each rank's DistributedDataParallel
replica of the network, and its share of each global batch in the order one process uses."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .. import dist
from ..models.base import Network
from .common import die_with_parent

if TYPE_CHECKING:
    from .training import TrainConfig


class _Replicated:
    """A DistributedDataParallel replica called like the network: `net(x)` and every method,
    e.g. `net.affinity(x, r)`, go through DDP's forward (which its gradient sync needs)."""

    class _Dispatch(torch.nn.Module):
        def __init__(self, net: Network):
            super().__init__()
            self.net = net

        def forward(self, method: str, *args, **kwargs):
            return getattr(self.net, method)(*args, **kwargs)

    def __init__(self, model: Network, device: torch.device):
        from torch.nn.parallel import DistributedDataParallel

        ids = None
        if device.type == "cuda":  # "cuda" alone: this local rank's GPU (dist.setup)
            ids = [device if device.index is not None else dist.device()]
        self.ddp = DistributedDataParallel(self._Dispatch(model), device_ids=ids)

    def __call__(self, *args, **kwargs):
        return self.ddp("forward", *args, **kwargs)

    def __getattr__(self, method: str):
        return lambda *args, **kwargs: self.ddp(method, *args, **kwargs)


def replicate(model: Network, device: torch.device):
    """The network for one process, or its DDP replica with global BatchNorm for several."""
    if dist.world() == 1:
        return model
    dist.use_global_batch_norm(model)
    return _Replicated(model, device)


def epoch_loader(
    dataset: Dataset, epoch: int, batch_size: int, cfg: TrainConfig, device: torch.device
) -> DataLoader:
    """This process's batches of the epoch: the order is a permutation seeded by (seed,
    epoch), the same for any number of processes; global batch k is its k-th slice of
    batch_size * world images, of which this rank takes every world-th (DistributedSampler)."""
    dataset.set_epoch(epoch)
    # dropout and friends draw from torch's global generator: seed it per epoch so a
    # resumed run trains exactly as an uninterrupted one
    torch.manual_seed(cfg.seed * 1000003 + epoch)
    gen = torch.Generator().manual_seed(cfg.seed * 1000003 + epoch)
    sampler = _GlobalOrder(
        dataset,
        num_replicas=dist.world(),
        rank=dist.rank(),
        shuffle=True,
        seed=cfg.seed * 1000003,
        drop_last=True,
    )
    sampler.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=cfg.num_workers,
        generator=gen,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        worker_init_fn=die_with_parent,
    )


class _GlobalOrder(DistributedSampler):
    """DistributedSampler over the permutation that DataLoader(shuffle=True, generator=
    Generator().manual_seed(seed + epoch)) gives one process (its iterator draws the
    workers' base seed from the generator, then the permutation), so that one process
    trains on the order it did before processes were counted, and N on the same one."""

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        torch.empty((), dtype=torch.int64).random_(generator=g)
        order = torch.randperm(len(self.dataset), generator=g).tolist()[: self.total_size]
        return iter(order[self.rank : self.total_size : self.num_replicas])

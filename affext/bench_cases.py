"""The measured cases: affext and each reference on the same inputs (performance.md)."""
from __future__ import annotations

import torch

from .measure import case
from .neighborhood import neighborhood_offsets
from .ops.affinity import pairwise_affinity
from .ops.pair_loss import pair_loss
from .reference.affinity import psa_affinity
from .reference.pair_loss import psa_affinity_labels, psa_pair_loss


def _features(device: torch.device, batch: int, channels: int, size: int,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    feat = torch.randn(batch, channels, size, size, generator=gen, dtype=dtype)
    return feat.to(device).requires_grad_()


def _affinity_case(forward):
    def builder(device: torch.device, batch: int = 1, channels: int = 448, size: int = 56,
                radius: int = 5):
        feat = _features(device, batch, channels, size)

        def work():
            feat.grad = None
            forward(feat, radius).sum().backward()
        return work
    return builder


# Forward + backward of the affinity, C=448 on a 56x56 map (a 448 crop at stride 8).
case("affinity/affext")(_affinity_case(pairwise_affinity))
case("affinity/psa-dense")(_affinity_case(psa_affinity))


def _label_map(device: torch.device, batch: int, size: int, block: int = 4) -> torch.Tensor:
    """(B, size, size) uint8 label map of blocks: background, two classes and 255 regions."""
    gen = torch.Generator().manual_seed(1)
    values = torch.tensor([0, 0, 0, 5, 5, 12, 255], dtype=torch.uint8)
    cells = (size + block - 1) // block
    coarse = values[torch.randint(0, len(values), (batch, cells, cells), generator=gen)]
    labels = coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :size, :size]
    return labels.contiguous().to(device)


def _affinities(device: torch.device, shape: tuple[int, ...]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    aff = 0.01 + 0.98 * torch.rand(shape, generator=gen)
    return aff.to(device).requires_grad_()


@case("pair_loss/affext")
def _pair_loss_affext(device: torch.device, batch: int = 8, size: int = 56, radius: int = 5):
    # (B, K, H, W) affinities as pairwise_affinity returns them, labels as a uint8 map.
    labels = _label_map(device, batch, size)
    aff = _affinities(device, (batch, len(neighborhood_offsets(radius)), size, size))

    def work():
        aff.grad = None
        pair_loss(aff, labels, radius).loss.backward()
    return work


@case("pair_loss/psa")
def _pair_loss_psa(device: torch.device, batch: int = 8, size: int = 56, radius: int = 5):
    # psa: (B, K, n_from) affinities as its AffinityNet returns them; the three float masks
    # built per image from the label map and stacked, then train_aff's loss.
    labels = _label_map(device, batch, size)
    n_from = (size - radius + 1) * (size - 2 * radius + 2)
    aff = _affinities(device, (batch, len(neighborhood_offsets(radius)), n_from))

    def work():
        aff.grad = None
        masks = psa_affinity_labels(labels, radius)
        psa_pair_loss(aff, *masks)["loss"].backward()
    return work

"""psa's pair labels and balanced loss (docs/method.md §4), written apart from the kernels:
three float masks per image built by slicing the label map once per offset (psa's data.py,
ExtractAffinityLabelInRadius), stacked over the batch, then psa's train_aff sums."""

from __future__ import annotations

import torch


def psa_offsets(radius: int = 5) -> list[tuple[int, int]]:
    """psa's search_dist: (0, 1..r-1), then dy = 1..r-1, dx = -(r-1)..r-1 inside the disk."""
    offsets = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        for dx in range(-radius + 1, radius):
            if dx * dx + dy * dy < radius * radius:
                offsets.append((dy, dx))
    return offsets


def psa_image_affinity_labels(
    label: torch.Tensor, radius: int = 5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """psa's (bg_pos, fg_pos, neg) float32 masks, each (K, n_from), of one (H, W) label map."""
    rf = radius - 1
    height, width = label.shape
    crop_h, crop_w = height - rf, width - 2 * rf
    labels_from = label[:-rf, rf:-rf].reshape(-1)
    labels_to = torch.stack(
        [
            label[dy : dy + crop_h, rf + dx : rf + dx + crop_w].reshape(-1)
            for dy, dx in psa_offsets(radius)
        ]
    )
    labels_from = labels_from.unsqueeze(0)
    valid = (labels_to < 255) & (labels_from < 255)
    pos = labels_to == labels_from
    bg_pos = pos & (labels_from == 0)
    fg_pos = pos & (labels_from != 0) & valid
    neg = ~pos & valid
    return bg_pos.float(), fg_pos.float(), neg.float()


def psa_affinity_labels(
    labels: torch.Tensor, radius: int = 5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The masks of a (B, H, W) batch, each (B, K, n_from), as psa's data loader collates them."""
    per_image = [psa_image_affinity_labels(label, radius) for label in labels]
    bg_pos, fg_pos, neg = (torch.stack(masks) for masks in zip(*per_image))
    return bg_pos, fg_pos, neg


def psa_pair_loss(
    aff: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor, neg: torch.Tensor
) -> dict[str, torch.Tensor]:
    """psa's train_aff loss of (B, K, n_from) affinities and masks.

    Returns loss, bg_loss, fg_loss, neg_loss and the counts (the mask sums, without 1e-5).
    """
    bg_count = torch.sum(bg_pos)
    fg_count = torch.sum(fg_pos)
    neg_count = torch.sum(neg)
    bg_loss = torch.sum(-bg_pos * torch.log(aff + 1e-5)) / (bg_count + 1e-5)
    fg_loss = torch.sum(-fg_pos * torch.log(aff + 1e-5)) / (fg_count + 1e-5)
    neg_loss = torch.sum(-neg * torch.log(1.0 + 1e-5 - aff)) / (neg_count + 1e-5)
    loss = bg_loss / 4 + fg_loss / 4 + neg_loss / 2
    return dict(
        loss=loss,
        bg_loss=bg_loss,
        fg_loss=fg_loss,
        neg_loss=neg_loss,
        bg_count=bg_count,
        fg_count=fg_count,
        neg_count=neg_count,
    )

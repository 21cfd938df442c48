"""Drop-ins for AFA's and ToCo's code (rulixiang/afa wetr/PAR.py, rulixiang/ToCo model/PAR.py
and utils/camutils.py): `from affext.par import PAR` is the one line a user changes.

PAR here keeps their module's constructor, attributes and state (the `kernel` buffer of the
ring's 8 one-hot 3x3 filters, so a state_dict loads either way, and .to() moves it), and runs
affext.pixel_adaptive_refine. refine_cams_with_bkg_v2 gives ToCo's result for a whole batch
and both background thresholds with one call of the refinement module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.par import check_dilations, check_num_iter, pixel_adaptive_refine
from ..reference.par import RING, ring_distances

__all__ = ["PAR", "refine_cams_with_bkg_v2"]


def ring_kernel() -> torch.Tensor:
    """(8, 1, 3, 3): filter j picks ring position j (row by row, centre left out)."""
    kernel = torch.zeros(len(RING), 1, 3, 3)
    for j, (dy, dx) in enumerate(RING):
        kernel[j, 0, 1 + dy, 1 + dx] = 1
    return kernel


class PAR(nn.Module):
    """Pixel-adaptive refinement: forward(imgs (B, 3, H, W), masks (B, C, h, w)) ->
    (B, C, H, W), as their module (w1 = 0.3, w2 = 0.01 as attributes they can be changed
    through), computed by affext.pixel_adaptive_refine."""

    def __init__(self, dilations: Sequence[int], num_iter: int):
        super().__init__()
        check_dilations(dilations)
        check_num_iter(num_iter)
        self.dilations = dilations
        self.num_iter = num_iter
        self.register_buffer("kernel", ring_kernel())
        # (1, 1, K, 1, 1) ring distances, a plain attribute as in their module.
        self.pos = ring_distances(dilations, torch.float32).view(1, 1, -1, 1, 1)
        self.dim = 2
        self.w1 = 0.3
        self.w2 = 0.01

    def forward(self, imgs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return pixel_adaptive_refine(
            imgs, masks, list(self.dilations), self.num_iter, self.w1, self.w2
        )

    def extra_repr(self) -> str:
        return f"dilations={list(self.dilations)}, num_iter={self.num_iter}"


Refiner = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def refine_cams_with_bkg_v2(
    ref_mod: Refiner | None = None,
    images: torch.Tensor | None = None,
    cams: torch.Tensor | None = None,
    cls_labels: torch.Tensor | None = None,
    high_thre: float | None = None,
    low_thre: float | None = None,
    ignore_index: int | bool = False,
    img_box=None,
    down_scale: int = 2,
) -> torch.Tensor:
    """ToCo's pseudo labels from CAMs refined by PAR, with ToCo's arguments and result.

    Args:
        ref_mod: the refinement module, called as ref_mod(images, masks) (affext's PAR, or
            theirs).
        images: (B, 3, H, W) de-normalised images.
        cams: (B, C, H, W) CAMs of the C foreground classes.
        cls_labels: (B, C) image-level labels (non-zero: present).
        high_thre, low_thre: the two background scores.
        ignore_index: the label of uncertain pixels (ToCo's default False, i.e. 0).
        img_box: per image (y0, y1, x0, x1) of the crop inside the padded image (one row per
            image, as ToCo's loader gives); labels outside it are ignore_index. None: the
            whole image (an addition: ToCo requires the boxes).
        down_scale: images and CAMs are refined at (H // down_scale, W // down_scale).

    Returns:
        (B, H, W) float labels on cams' device, ToCo's result: 0 where both thresholds make
        the pixel background, ignore_index where only the high one does, else the class
        (1 + the CAM channel).

    ToCo refines each image's present classes (with background first) twice, once per
    threshold, in a loop; here the absent classes are exact zeros after the softmax, which
    PAR leaves zero at no cost, and one ref_mod call refines the whole batch with both
    thresholds' channels side by side, which share the images' affinity.
    """
    b, _, h, w = images.shape
    size = [h // down_scale, w // down_scale]
    small_images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    device = cams.device
    ones = torch.ones(b, 1, h, w, device=device)  # the default dtype, as ToCo's (cat promotes)
    # The two background planes and the CAMs, resized together (per channel, as ToCo does).
    stacked = torch.cat((ones * high_thre, ones * low_thre, cams), dim=1)
    stacked = F.interpolate(stacked, size=size, mode="bilinear", align_corners=False)
    present = torch.cat((torch.ones(b, 1, device=device), cls_labels.to(device)), dim=1) != 0
    present_map = present[:, :, None, None]
    probs = []
    for bkg in (0, 1):  # high, then low
        logits = torch.cat((stacked[:, bkg : bkg + 1], stacked[:, 2:]), dim=1)
        logits = logits.masked_fill(~present_map, float("-inf"))
        probs.append(logits.softmax(dim=1))
    refined = ref_mod(small_images, torch.cat(probs, dim=1))
    refined = F.interpolate(refined, size=(h, w), mode="bilinear", align_corners=False)
    n = present.shape[1]
    labels = []
    for part in (refined[:, :n], refined[:, n:]):
        labels.append(part.masked_fill(~present_map, float("-inf")).argmax(dim=1))
    label_h, label_l = (x.to(torch.get_default_dtype()) for x in labels)

    inside = torch.zeros(b, h, w, dtype=torch.bool, device=device)
    boxes = [(0, h, 0, w)] * b if img_box is None else img_box
    for idx, coord in enumerate(boxes):
        inside[idx, int(coord[0]) : int(coord[1]), int(coord[2]) : int(coord[3])] = True
    ignore = torch.full_like(label_h, float(ignore_index))
    label_h = torch.where(inside, label_h, ignore)
    label_l = torch.where(inside, label_l, ignore)
    refined_label = label_h.clone()
    refined_label[label_h == 0] = ignore_index
    refined_label[(label_h + label_l) == 0] = 0
    return refined_label

"""Backbones at output stride 8: "tiny" (demo, tests), "resnet50", "resnet38" (psa)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from .base import Backbone, StateDict, read_state_dict
from .resnet38 import ResNet38
from .resnet50 import ResNet50
from .tiny import TinyBackbone

BACKBONES: dict[str, type[Backbone]] = {
    "tiny": TinyBackbone,
    "resnet50": ResNet50,
    "resnet38": ResNet38,
}


def detect_backbone(state: Mapping[str, torch.Tensor]) -> str | None:
    """The registry name of the backbone whose parameters a state dict holds, or None.

    Keys may carry a network's "backbone." prefix.
    """
    keys = {k.removeprefix("backbone.") for k in state}
    found = [name for name, cls in BACKBONES.items() if cls.signature_key in keys]
    return found[0] if len(found) == 1 else None


def build_backbone(
    name: str, weights: str | os.PathLike | StateDict | None = None, *, freeze: bool | None = None
) -> Backbone:
    """A new backbone by registry name, optionally with pretrained weights.

    Args:
        name: one of BACKBONES ("tiny", "resnet50", "resnet38").
        weights: a torch state-dict file (or mapping) in the backbone's own parameter names:
            torchvision's ImageNet file for resnet50, psa's ImageNet-converted dict for
            resnet38. Loaded strictly apart from a classifier head (fc.* / fc8.*).
        freeze: freeze BatchNorm and the first blocks (`Backbone.freeze`), psa's way of
            fine-tuning. Default: only when weights are given.
    """
    try:
        factory = BACKBONES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None
    backbone = factory()
    if weights is not None:
        backbone.load_pretrained(weights)
    if freeze if freeze is not None else weights is not None:
        backbone.freeze()
    return backbone


__all__ = ["BACKBONES", "Backbone", "build_backbone", "detect_backbone", "read_state_dict"]

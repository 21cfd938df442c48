"""What every backbone is: three stride-8 feature maps, pretrained weights, frozen layers."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from ...safe_load import load_torch_file

StateDict = Mapping[str, torch.Tensor]

# Normalisation layers whose statistics and affine parameters psa freezes when fine-tuning
# pretrained weights (psa resnet38d.Net.train; docs/method.md §4).
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class Backbone(nn.Module):
    """A feature extractor at output stride 8 for the CAM network and AffinityNet.

    `forward(x)` takes a (B, 3, H, W) ImageNet-normalised RGB batch and returns three maps,
    shallow to deep, all of size (ceil(H/8), ceil(W/8)) with `feature_channels` channels; the
    last is the CAM feature (docs/method.md §1 and §3). Every stride-2 layer pads so that it
    rounds up, so any H, W works: when H or W is not a multiple of 8, the last row or column
    of cells covers a partial 8x8 block of the input (psa pads images to a multiple of 8
    before the random walk; docs/method.md §5).

    Attributes:
        name: registry name ("tiny", "resnet50", "resnet38").
        feature_channels: channels of the three maps.
        pretrained: True once weights were loaded from a file (`load_pretrained`). Networks
            use it to put the backbone's parameters in psa's 1x/2x lr groups and their own new
            layers in the 10x/20x groups.
        frozen: True after `freeze()`: BatchNorm layers stay in eval mode (frozen statistics)
            and their affine parameters, with those of `first_blocks()`, do not train.
    """

    name: str = ""
    feature_channels: tuple[int, int, int] = (0, 0, 0)
    # Keys of a pretrained file that belong to a classifier head, not the backbone.
    ignored_weight_prefixes: tuple[str, ...] = ()
    # A parameter name only this backbone has; tells which backbone a state dict holds.
    signature_key: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.pretrained = False
        self.frozen = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def first_blocks(self) -> list[nn.Module]:
        """The early layers that psa keeps fixed when fine-tuning pretrained weights."""
        return []

    def freeze(self, enabled: bool = True) -> Backbone:
        """Freeze (or unfreeze) BatchNorm statistics and affines and the first blocks.

        psa fine-tunes its ImageNet backbone this way (docs/method.md §4): small batches
        would give poor batch statistics, and the first layers are generic. Frozen parameters
        get requires_grad=False, so `param_groups` leaves them out.
        """
        self.frozen = enabled
        for module in self.first_blocks():
            for p in module.parameters():
                p.requires_grad_(not enabled)
        for module in self.modules():
            if isinstance(module, _BATCH_NORMS):
                for p in module.parameters(recurse=False):
                    p.requires_grad_(not enabled)
        return self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        """Set train/eval mode; BatchNorm layers stay in eval mode while frozen."""
        super().train(mode)
        if self.frozen:
            for module in self.modules():
                if isinstance(module, _BATCH_NORMS):
                    module.eval()
        return self

    def load_pretrained(self, weights: str | os.PathLike | StateDict) -> Backbone:
        """Load ImageNet (or other pretrained) weights strictly and mark them pretrained.

        Keys under `ignored_weight_prefixes` (a classifier head) are dropped; every other key
        must match this backbone exactly. Raises ValueError naming the missing and
        unexpected keys otherwise.
        """
        from . import detect_backbone  # the registry imports this module

        state = read_state_dict(weights)
        source = (
            f"weights file {os.fspath(weights)}"
            if isinstance(weights, (str, os.PathLike))
            else "the weights state dict"
        )
        found = detect_backbone(state)
        if found is not None and found != self.name:
            raise ValueError(f"{source} holds a {found!r} backbone, not {self.name!r}")
        state = {k: v for k, v in state.items() if not k.startswith(self.ignored_weight_prefixes)}
        load_strict(self, state, what=source, target=f"backbone {self.name!r}")
        self.pretrained = True
        return self


def read_state_dict(weights: str | os.PathLike | StateDict) -> dict[str, torch.Tensor]:
    """A state dict from a file (torch.save of a dict of tensors) or a mapping.

    Unwraps {"state_dict": ...} / {"model": ...} containers and DataParallel's "module."
    prefix, which is how many released checkpoints are stored.
    """
    if isinstance(weights, (str, os.PathLike)):
        hint = ""
        if os.fspath(weights).endswith(".params"):
            hint = (
                "It looks like an MXNet .params file: convert it to a torch state dict "
                "first (psa's network/resnet38d.convert_mxnet_to_torch, which needs "
                "mxnet) and torch.save the result."
            )
        obj = load_torch_file(weights, "weights file", hint)
    else:
        obj = weights
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ValueError("weights must be a state dict: a mapping of parameter names to tensors")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _describe(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def check_keys(
    expected: Mapping[str, object], found: Mapping[str, object], what: str, target: str
) -> None:
    """Raise ValueError listing the keys of `expected` missing from `found` and the keys of
    `found` that `expected` lacks. BatchNorm `num_batches_tracked` counters may be missing."""
    missing = [k for k in expected if k not in found and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in found if k not in expected]
    if missing or unexpected:
        parts = [f"{what} does not match {target}."]
        if missing:
            parts.append(f"Missing keys: {_describe(missing)}.")
        if unexpected:
            parts.append(f"Unexpected keys: {_describe(unexpected)}.")
        raise ValueError(" ".join(parts))


def load_strict(module: nn.Module, state: StateDict, what: str, target: str) -> None:
    """module.load_state_dict(state, strict=True) with an error a user can act on.

    BatchNorm's `num_batches_tracked` counters may be absent (files saved before torch 0.4.1,
    such as psa's releases); they are then set to 0. Raises ValueError listing the missing
    and unexpected keys, or the shape mismatches.
    """
    state = dict(state)
    expected = module.state_dict()
    for key, value in expected.items():
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    check_keys(expected, state, what, target)
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if state[k].shape != v.shape
    ]
    if wrong:
        raise ValueError(f"{what} does not match {target}: shape mismatch in {_describe(wrong)}.")
    module.load_state_dict(state, strict=True)

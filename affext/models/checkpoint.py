"""Saving and loading networks: affext checkpoints and psa's plain state dicts.

An affext checkpoint (`save_checkpoint`) is a dict {"affext_checkpoint": 1, "network":
"cam" | "aff" | "seg", "backbone": name, "num_classes": int (CAM only), "state_dict": ..., "meta":
{...}}, read back with torch.load(weights_only=True): no pickled code runs from a downloaded
file. It is the one checkpoint format of affext: the library, the stages (final networks and
per-epoch training state, the optimiser's in "meta") and the CLI all write it with
`save_checkpoint` and read it with `read_checkpoint` / `load_checkpoint`. Inside it, backbone
parameters are named "backbone.<name>" and the network's own layers keep psa's names (fc8;
f8_3, f8_4, f8_5, f9).

psa saved bare state dicts of its whole networks (res38_cls.pth, res38_aff.pth) in which the
backbone's names sit at the top level (conv1a, b2, ..., bn7) beside the head's. We call that
the "psa layout"; `load_psa_checkpoint` and `psa_state_dict` convert between the two.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from ..files import atomic_save
from ..safe_load import load_torch_file
from .affinity_net import AffinityNet
from .backbones import BACKBONES, build_backbone, detect_backbone
from .backbones.base import StateDict, check_keys, load_strict, read_state_dict
from .base import Network
from .cam import CAMNet

FORMAT_VERSION = 1
_NETWORKS = {"cam": CAMNet, "aff": AffinityNet}
_NETWORK_NAMES = {
    "cam": "a CAM network (CAMNet)",
    "aff": "an AffinityNet",
    "seg": "a segmentation network (SegNet, train-seg's seg_net.pt)",
}
_HEAD_SIGNATURES = {"cam": "fc8.weight", "aff": "f9.weight"}
_PREFIX = "backbone."


def _check_network(model: object) -> None:
    if not isinstance(model, Network):
        raise TypeError(
            "model must be an affext Network (CAMNet, AffinityNet, SegNet), "
            f"got {type(model).__name__}"
        )


def _source(path: object, otherwise: str) -> str:
    """How an error names what was read: the file (also that of a read_checkpoint dict), or
    `otherwise` for a mapping."""
    if isinstance(path, Mapping) and isinstance(path.get("path"), str):
        path = path["path"]
    return f"checkpoint {os.fspath(path)}" if isinstance(path, (str, os.PathLike)) else otherwise


def _wrong_network(source: str, found: str, wanted: str) -> ValueError:
    return ValueError(
        f"{source} holds {_NETWORK_NAMES[found]}, not {_NETWORK_NAMES[wanted]}: load it into "
        f"{_NETWORKS[found].__name__} (train-cam's cam_net.pt and psa's res38_cls.pth are CAM "
        "networks, for --cam-net; train-aff's aff_net.pt and psa's res38_aff.pth are "
        "AffinityNets, for --aff-net)"
    )


def _head_names(model: Network) -> set[str]:
    return {name for name, _ in model.named_children() if name != "backbone"}


def psa_state_dict(model: Network) -> dict[str, torch.Tensor]:
    """model's state dict in psa's layout: backbone keys without the "backbone." prefix.

    For a resnet38 CAMNet (AffinityNet) this is exactly the key set of psa's res38_cls.pth
    (res38_aff.pth), plus BatchNorm's num_batches_tracked counters.
    """
    return {k.removeprefix(_PREFIX): v for k, v in model.state_dict().items()}


def _to_affext_layout(model: Network, state: Mapping[str, torch.Tensor]) -> dict:
    """psa's layout -> model.state_dict()'s: every key not of a head layer is the backbone's."""
    heads = _head_names(model)
    return {(k if k.split(".", 1)[0] in heads else _PREFIX + k): v for k, v in state.items()}


def _detect_network(state: Mapping[str, torch.Tensor]) -> str | None:
    found = [kind for kind, key in _HEAD_SIGNATURES.items() if key in state]
    return found[0] if len(found) == 1 else None


def load_psa_checkpoint(model: Network, weights: str | os.PathLike | StateDict) -> Network:
    """Load a bare state dict of a whole network strictly, e.g. psa's res38_cls.pth.

    Accepts psa's layout (backbone keys at the top level) or affext's ("backbone."
    prefixed), a file or a mapping, with or without DataParallel's "module." prefix and
    BatchNorm's num_batches_tracked counters. psa's res38_cls.pth loads into
    CAMNet(build_backbone("resnet38")), res38_aff.pth into AffinityNet(build_backbone(
    "resnet38")). Raises ValueError when the backbone or the network differs, naming both,
    or listing the missing and unexpected keys (in psa's layout).
    """
    _check_network(model)
    return _load_psa_layout(model, read_state_dict(weights), _source(weights, "the state dict"))


def _load_psa_layout(model: Network, state: dict, source: str) -> Network:
    name = model.backbone.name
    found = detect_backbone(state)
    if found is not None and found != name:
        raise ValueError(
            f"{source} holds a {found!r} backbone, but the model's backbone is "
            f"{name!r}: build it with build_backbone({found!r})"
        )
    flat = {k.removeprefix(_PREFIX): v for k, v in state.items()}
    kind = _detect_network(flat)
    if kind is not None and kind != model.kind:
        raise _wrong_network(source, kind, model.kind)
    if kind == "cam":
        _check_classes(model, flat["fc8.weight"].shape[0], source)
    check_keys(
        psa_state_dict(model), flat, source, f"{type(model).__name__} with backbone {name!r}"
    )
    load_strict(
        model,
        _to_affext_layout(model, flat),
        what=source,
        target=f"{type(model).__name__} with backbone {name!r}",
    )
    return model


def check_backbone(found: str | None, wanted: str, source: str, remedy: str) -> None:
    """Refuse weights trained with another backbone than `wanted`: "<source> was trained with
    backbone <found>, not <wanted>: <remedy>", the remedy's "{}" (or "{!r}") being `found`."""
    if found != wanted:
        raise ValueError(
            f"{source} was trained with backbone {found!r}, not {wanted!r}: " + remedy.format(found)
        )


def _check_classes(model: Network, num_classes: int | None, source: str) -> None:
    """Refuse a CAM network's weights of another class count than the model's."""
    if isinstance(model, CAMNet) and num_classes is not None and num_classes != model.num_classes:
        raise ValueError(
            f"{source} holds a CAM network for {num_classes} classes, but the model has "
            f"{model.num_classes}: it was trained on another dataset (or class list); build "
            f"CAMNet(backbone, num_classes={num_classes}) or retrain"
        )


def save_checkpoint(model: Network, path: str | os.PathLike, **meta: Any) -> None:
    """Save model with its network kind and backbone name recorded, atomically (an interrupted
    save leaves the previous file whole).

    meta: extra plain values (numbers, strings, lists, dicts of them) kept under "meta",
    e.g. epoch or training settings; they must survive torch.load(weights_only=True).
    """
    _check_network(model)
    ckpt = {
        "affext_checkpoint": FORMAT_VERSION,
        "network": model.kind,
        "backbone": model.backbone.name,
        "state_dict": model.state_dict(),
        "meta": meta,
    }
    if isinstance(model, CAMNet):
        ckpt["num_classes"] = model.num_classes
    atomic_save(path, lambda f: torch.save(ckpt, f))


def read_checkpoint(path: str | os.PathLike | Mapping) -> dict:
    """An affext checkpoint as a dict, or a bare state dict (psa's) described the same way.

    For a bare state dict, "network", "backbone" and "num_classes" are inferred from its keys
    (None where they cannot be) and "affext_checkpoint" is 0. The stages' files of affext
    0.1.0 ({"backbone", "model", ...training state}) read as affext checkpoints.
    """
    if isinstance(path, Mapping):
        obj = path
    else:
        obj = load_torch_file(path, "checkpoint")
        ckpt = read_checkpoint(obj)
        ckpt["path"] = os.fspath(path)  # errors of load_checkpoint(model, ckpt) name the file
        return ckpt
    if isinstance(obj, Mapping) and "affext_checkpoint" in obj:
        return dict(obj)
    if isinstance(obj, Mapping) and isinstance(obj.get("backbone"), str) and "model" in obj:
        return _from_stage_file(obj)
    state = read_state_dict(obj)
    flat = {k.removeprefix(_PREFIX): v for k, v in state.items()}
    kind = _detect_network(flat)
    return {
        "affext_checkpoint": 0,
        "network": kind,
        "backbone": detect_backbone(state),
        "num_classes": flat["fc8.weight"].shape[0] if kind == "cam" else None,
        "state_dict": state,
        "meta": {},
    }


def _from_stage_file(obj: Mapping) -> dict:
    """affext 0.1.0's stage file {"backbone", "model": state dict, ...} as a checkpoint."""
    state = read_state_dict(obj["model"])
    kind = _detect_network({k.removeprefix(_PREFIX): v for k, v in state.items()})
    return {
        "affext_checkpoint": FORMAT_VERSION,
        "network": kind,
        "backbone": obj["backbone"],
        "num_classes": state["fc8.weight"].shape[0] if kind == "cam" else None,
        "state_dict": state,
        "meta": {k: v for k, v in obj.items() if k not in ("backbone", "model")},
    }


def load_checkpoint(model: Network, path: str | os.PathLike | Mapping) -> dict:
    """Load a checkpoint into model strictly; returns its "meta" dict.

    Takes an affext checkpoint (`save_checkpoint`) or a bare state dict such as psa's
    res38_cls.pth (then as `load_psa_checkpoint`). Raises ValueError when the checkpoint was
    trained with another backbone ("checkpoint ... was trained with backbone X, not Y") or
    holds the other network.
    """
    _check_network(model)
    source = _source(path, "the checkpoint")
    ckpt = read_checkpoint(path)
    if not ckpt["affext_checkpoint"]:
        _load_psa_layout(model, read_state_dict(ckpt["state_dict"]), source)
        return {}
    check_backbone(
        ckpt["backbone"], model.backbone.name, source, "build the network with build_backbone({!r})"
    )
    if ckpt["network"] != model.kind:
        if ckpt["network"] in _NETWORKS:
            raise _wrong_network(source, ckpt["network"], model.kind)
        held = _NETWORK_NAMES.get(ckpt["network"], repr(ckpt["network"]))
        raise ValueError(f"{source} holds {held}, not {_NETWORK_NAMES[model.kind]}")
    _check_classes(model, ckpt.get("num_classes"), source)
    load_strict(
        model,
        ckpt["state_dict"],
        what=source,
        target=f"{type(model).__name__} with backbone {model.backbone.name!r}",
    )
    return dict(ckpt.get("meta") or {})


def build_from_checkpoint(path: str | os.PathLike | Mapping) -> Network:
    """A CAMNet or AffinityNet built for the checkpoint (its backbone, its classes) and loaded.

    Works for affext checkpoints and for psa's bare state dicts. The network is returned in
    eval mode, its backbone not marked pretrained and not frozen.
    """
    ckpt = read_checkpoint(path)
    kind, name = ckpt["network"], ckpt["backbone"]
    if kind not in _NETWORKS:
        raise ValueError(
            "cannot tell whether the checkpoint holds a CAM network (fc8) or an "
            "AffinityNet (f8_3..f9); build the network and use load_checkpoint"
        )
    if name not in BACKBONES:
        raise ValueError(
            f"cannot tell the checkpoint's backbone (got {name!r}); build the "
            f"network with one of {sorted(BACKBONES)} and use load_checkpoint"
        )
    backbone = build_backbone(name)
    model = CAMNet(backbone, ckpt["num_classes"]) if kind == "cam" else AffinityNet(backbone)
    load_checkpoint(model, ckpt)
    return model.eval()

"""What the CAM network and AffinityNet share: a backbone, new layers, psa's lr groups."""

from __future__ import annotations

from torch import nn

from .backbones import Backbone


class Network(nn.Module):
    """A backbone plus new layers, named as in psa so its checkpoints load (see checkpoint.py).

    Subclasses set `kind` ("cam" or "aff") and define their new layers as direct children;
    the backbone lives in `self.backbone` (state-dict keys "backbone.*").
    """

    kind: str = ""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        if not isinstance(backbone, Backbone):
            raise TypeError(
                f"backbone must be an affext Backbone (see build_backbone), "
                f"got {type(backbone).__name__}"
            )
        self.backbone = backbone

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """psa's four SGD parameter groups; see `param_groups`."""
        return param_groups(self, lr, weight_decay)


# psa train_cls/train_aff: (name, lr multiplier, with weight decay)
_GROUPS = (
    ("pretrained_weight", 1.0, True),
    ("pretrained_bias", 2.0, False),
    ("new_weight", 10.0, True),
    ("new_bias", 20.0, False),
)


def param_groups(model: Network, lr: float, weight_decay: float) -> list[dict]:
    """psa's four SGD parameter groups for a CAMNet or AffinityNet (docs/method.md §4).

    Returns four dicts for torch.optim (keys "params", "lr", "weight_decay", "name"), always
    in this order:
      0 "pretrained_weight": backbone weights loaded from a file, lr, weight decay;
      1 "pretrained_bias":   their biases, 2 lr, no decay;
      2 "new_weight":        the network's own new layers' weights, 10 lr, weight decay;
      3 "new_bias":          their biases, 20 lr, no decay.
    A parameter whose name ends in "bias" is a bias (normalisation shifts included).
    Parameters with requires_grad=False (frozen by `Backbone.freeze`) are left out, as psa
    does; every other parameter is in exactly one group.

    When the backbone was not loaded from a file (`backbone.pretrained` is False: tiny, or
    resnet50/resnet38 without weights) the whole network starts from scratch together, and
    no layer is ahead of another: the 10x/20x boost, which lets new layers catch up with a
    trained backbone, would only make those layers outpace the rest and destabilise training.
    Then every weight goes to group 0 (lr) and every bias to group 1 (2 lr, no decay), and
    groups 2 and 3 are empty; choose `lr` for training from scratch accordingly.
    """
    if not isinstance(model, Network):
        raise TypeError(f"model must be a CAMNet or AffinityNet, got {type(model).__name__}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    groups = [
        {
            "name": name,
            "params": [],
            "lr": lr * mult,
            "weight_decay": weight_decay if decay else 0.0,
        }
        for name, mult, decay in _GROUPS
    ]
    pretrained = model.backbone.pretrained
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_new = pretrained and not name.startswith("backbone.")
        groups[2 * is_new + name.endswith("bias")]["params"].append(p)
    return groups

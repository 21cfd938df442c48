"""`patch(net)`: psa's own AffinityNet instance, its forward through affext's fused kernel.

psa's network/resnet38_aff.Net (and vgg16_aff.Net) compute the 448-channel feature f_aff and
then the affinities with index_select of "from" and "to" features and an explicit
(B, C, K, n_from) difference tensor. The patched forward computes the same feature with the
network's own layers and the affinities with `affext.psa.affinity` (docs/method.md §3).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .ops import affinity, dense_affinity_matrix, warn_dense

_REQUIRED = ("forward_as_dict", "f8_3", "f8_4", "f8_5", "f9")
# psa's feature keys per network: resnet38d's forward_as_dict and vgg16d's
_RESNET38_KEYS = ("conv4", "conv5", "conv6")
_VGG16_KEYS = ("conv4", "conv5", "conv5fc")
_PATCHED_ATTR = "_affext_psa_patch"


def psa_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """f_aff of psa's AffinityNet: ELU(f9(cat(ELU(f8_3(.)), ELU(f8_4(.)), ELU(f8_5(.))))).

    resnet38_aff reads forward_as_dict's "conv4", "conv5", "conv6"; vgg16_aff (recognised by
    its gn8_3 layer) "conv4", "conv5", "conv5fc" with a GroupNorm after each 1x1 conv.
    """
    d = net.forward_as_dict(x)
    if hasattr(net, "gn8_3"):
        parts = [
            F.elu(gn(conv(d[key])))
            for conv, gn, key in zip(
                (net.f8_3, net.f8_4, net.f8_5), (net.gn8_3, net.gn8_4, net.gn8_5), _VGG16_KEYS
            )
        ]
    else:
        parts = [
            F.elu(conv(d[key])) for conv, key in zip((net.f8_3, net.f8_4, net.f8_5), _RESNET38_KEYS)
        ]
    return F.elu(net.f9(torch.cat(parts, dim=1)))


def _patched_forward(self, x: torch.Tensor, to_dense: bool = False) -> torch.Tensor:
    features, radius = getattr(type(self), _PATCHED_ATTR)
    feat = features(self, x)
    aff = affinity(feat, radius)
    if to_dense:
        warn_dense()
        return dense_affinity_matrix(aff, feat.shape[2], feat.shape[3], radius)
    return aff


def patch(
    net: nn.Module,
    radius: int = 5,
    features: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
) -> nn.Module:
    """Make psa's AffinityNet compute its affinities with affext's fused kernel, in place.

    Args:
        net: an instance of psa's network.resnet38_aff.Net (or vgg16_aff.Net), weights loaded
            or not. Its class is swapped for a subclass whose forward(x, to_dense=False)
            returns the same tensors as psa's: net(x) the (B, 34, n_from) affinities, now
            through `affext.psa.affinity` (differentiable, no difference tensor);
            net(x, True) psa's dense N x N matrix, built on the network's device (psa goes
            through the CPU) with a warning that `affext.psa.random_walk` needs no matrix.
            A subclass rather than an instance attribute, so DataParallel replicas and
            state dicts behave as before. Patching twice is a no-op; `unpatch` undoes it.
        radius: the neighbourhood radius psa's network hard-codes (5).
        features: (net, x) -> the (B, C, h, w) feature, for networks whose feature head is
            not psa's (default: `psa_features`).

    Returns:
        net itself.
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be psa's AffinityNet (an nn.Module), got {type(net).__name__}")
    if hasattr(type(net), _PATCHED_ATTR):
        return net
    if features is None:
        missing = [a for a in _REQUIRED if not hasattr(net, a)]
        if missing:
            raise TypeError(
                f"{type(net).__name__} is not psa's AffinityNet (no {', '.join(missing)}): "
                "patch expects network.resnet38_aff.Net or network.vgg16_aff.Net, or pass "
                "features=callable(net, x) returning the affinity feature"
            )
        features = psa_features
    cls = type(net)
    patched = type(
        cls.__name__,
        (cls,),
        {
            "forward": _patched_forward,
            _PATCHED_ATTR: (features, radius),
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
        },
    )
    net.__class__ = patched
    return net


def unpatch(net: nn.Module) -> nn.Module:
    """Undo `patch`: net's class and forward are psa's again."""
    cls = type(net)
    if hasattr(cls, _PATCHED_ATTR) and _PATCHED_ATTR in cls.__dict__:
        net.__class__ = cls.__bases__[0]
    return net


def is_patched(net: nn.Module) -> bool:
    return hasattr(type(net), _PATCHED_ATTR)

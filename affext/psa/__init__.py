"""affext as a drop-in for psa (jiwoon-ahn/psa), at three depths.

1. psa's tensors: `affinity(feat)` is psa's (B, K, n_from) affinity tensor, `random_walk(cam,
   aff, beta, logt)` psa infer_aff's walk without the N x N matrix, `pair_loss(aff, bg_label,
   fg_label, neg_label)` psa train_aff's loss; `AffinityLabelMap` replaces psa's
   ExtractAffinityLabelInRadius so that `pair_loss_from_labels` runs the fused loss.
2. psa's network: `patch(net)` makes psa's resnet38_aff.Net use the fused kernel in place.
3. psa's scripts: `affext psa train_cls | infer_cls | train_aff | infer_aff` with psa's flags
   and files, and `affext psa convert_weights` for psa's MXNet ImageNet weights
   (`read_params` reads MXNet .params files without mxnet).
"""

from .mxnet import mxnet_to_resnet38, read_params
from .ops import (
    AffinityLabelMap,
    affinity,
    dense_affinity_matrix,
    pair_loss,
    pair_loss_from_labels,
    random_walk,
    to_map,
)
from .patch import is_patched, patch, psa_features, unpatch

__all__ = [
    "AffinityLabelMap",
    "affinity",
    "dense_affinity_matrix",
    "is_patched",
    "mxnet_to_resnet38",
    "pair_loss",
    "pair_loss_from_labels",
    "patch",
    "psa_features",
    "random_walk",
    "read_params",
    "to_map",
    "unpatch",
]

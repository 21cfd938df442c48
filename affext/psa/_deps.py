"""Every affext function the psa drop-in uses, imported in this one place.

affext.psa sits on top of the rest of affext; when those functions move, only these imports
change.
"""

from __future__ import annotations

from ..data.voc import DatasetError, load_label_png, read_id_list
from ..models import AffinityNet, CAMNet, build_backbone, load_psa_checkpoint, psa_state_dict
from ..models.backbones.base import read_state_dict
from ..neighborhood import check_radius, from_region, neighborhood_offsets, psa_layout
from ..ops import PairLoss, pair_loss, pairwise_affinity, random_walk
from ..stages.aff_labels import AffLabelsConfig, make_aff_labels
from ..stages.common import atomic_save, resolve_device
from ..stages.make_cam import MakeCamConfig, make_cam
from ..stages.make_rw import MakeRwConfig, make_rw
from ..stages.train_aff import AFF_NET_FILE, TrainAffConfig, load_aff_net, train_aff
from ..stages.train_cam import CAM_NET_FILE, TrainCamConfig, load_cam_net, train_cam
from ..stages.training import save_checkpoint as save_stage_checkpoint

__all__ = [
    "AFF_NET_FILE",
    "CAM_NET_FILE",
    "AffLabelsConfig",
    "AffinityNet",
    "CAMNet",
    "DatasetError",
    "MakeCamConfig",
    "MakeRwConfig",
    "PairLoss",
    "TrainAffConfig",
    "TrainCamConfig",
    "atomic_save",
    "build_backbone",
    "check_radius",
    "from_region",
    "load_aff_net",
    "load_cam_net",
    "load_label_png",
    "load_psa_checkpoint",
    "make_aff_labels",
    "make_cam",
    "make_rw",
    "neighborhood_offsets",
    "pair_loss",
    "pairwise_affinity",
    "psa_layout",
    "psa_state_dict",
    "random_walk",
    "read_id_list",
    "read_state_dict",
    "resolve_device",
    "save_stage_checkpoint",
    "train_aff",
    "train_cam",
]

"""Networks of the pipeline: backbones, the CAM network, AffinityNet, the segmentation network.

backbone = build_backbone("resnet38", weights="res38_imagenet.pth")  # or "tiny"
cam_net = CAMNet(backbone)                 # logits, .cams(x) at stride 8
aff_net = AffinityNet(build_backbone(...)) # f_aff, .affinity(x, radius)
optimizer = torch.optim.SGD(param_groups(cam_net, lr, weight_decay), lr, momentum=0.9)
save_checkpoint(cam_net, path); load_checkpoint(cam_net, path)
load_psa_checkpoint(CAMNet(build_backbone("resnet38")), "res38_cls.pth")
"""

from .affinity_net import AffinityNet
from .backbones import BACKBONES, Backbone, build_backbone
from .base import Network, param_groups
from .cam import CAMNet, classification_loss
from .checkpoint import (
    build_from_checkpoint,
    detect_backbone,
    load_checkpoint,
    load_psa_checkpoint,
    psa_state_dict,
    read_checkpoint,
    save_checkpoint,
)
from .seg import SegNet, segmentation_loss

__all__ = [
    "BACKBONES",
    "AffinityNet",
    "Backbone",
    "CAMNet",
    "Network",
    "SegNet",
    "build_backbone",
    "build_from_checkpoint",
    "classification_loss",
    "detect_backbone",
    "load_checkpoint",
    "load_psa_checkpoint",
    "param_groups",
    "psa_state_dict",
    "read_checkpoint",
    "save_checkpoint",
    "segmentation_loss",
]

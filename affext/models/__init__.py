"""Networks of the pseudo-label pipeline: backbones, the CAM network, AffinityNet."""
from .affinity_net import AffinityNet
from .backbones import BACKBONES, Backbone, build_backbone
from .base import Network, param_groups
from .cam import CAMNet, classification_loss

__all__ = ["BACKBONES", "AffinityNet", "Backbone", "CAMNet", "Network", "build_backbone",
           "classification_loss", "param_groups"]

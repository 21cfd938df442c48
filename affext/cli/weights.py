"""The `affext` command's refusal to train an ImageNet backbone from scratch unless asked to
(train-cam, train-aff, train-seg and run call it before any work)."""

from __future__ import annotations

# Where each backbone's ImageNet weights come from (what build_backbone's `weights` takes).
IMAGENET_WEIGHTS = {
    "resnet38": "psa's ImageNet ResNet-38, ilsvrc-cls_rna-a1_cls1000_ep-0001.params (linked "
    "from psa's README: github.com/itijyou/ademxapp), converted once with `affext psa "
    "convert_weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params res38_imagenet.pth`",
    "resnet50": "torchvision's ImageNet ResNet-50 state-dict file, e.g. resnet50-0676ba61.pth "
    "(torchvision.models.ResNet50_Weights.IMAGENET1K_V1)",
}


def _require_weights(args, backbone: str | None = None, weights: str | None = None) -> None:
    """Refuse, before any work, to train an ImageNet backbone from scratch unless asked to:
    psa starts from ImageNet weights, and from scratch its schedule learns nothing useful.
    backbone / weights: the resolved ones (a --config file's), else the flags'."""
    backbone = backbone or args.backbone
    source = IMAGENET_WEIGHTS.get(backbone)
    if source is None or weights or args.weights or args.from_scratch:
        return
    raise ValueError(
        f"no --weights for the {backbone} backbone, which would then train from scratch "
        f"(psa starts from ImageNet weights; from scratch its epochs learn nothing useful). "
        f"Pass --weights with {source}; or --backbone tiny for the CPU demo; or "
        "--from-scratch to train from scratch all the same"
    )

"""Networks: backbone strides and names, the CAM and affinity heads, lr groups, checkpoints."""

from __future__ import annotations

import functools
import math
import re

import pytest
import torch
import torch.nn.functional as F

from affext import pairwise_affinity
from affext.models import (
    BACKBONES,
    AffinityNet,
    CAMNet,
    build_backbone,
    build_from_checkpoint,
    classification_loss,
    detect_backbone,
    load_checkpoint,
    load_psa_checkpoint,
    param_groups,
    psa_state_dict,
    save_checkpoint,
)

# Some tests build the big backbones on the meta device (no memory, no init time); loading a
# state dict into those is a no-op that torch warns about. Name and shape checks still run.
pytestmark = pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")


def _bn_keys(prefix: str, channels: int) -> dict[str, tuple]:
    return {f"{prefix}.{n}": (channels,) for n in ("weight", "bias", "running_mean", "running_var")}


def psa_resnet38_keys() -> dict[str, tuple]:
    """Key -> shape of psa's resnet38d.Net state dict, written from psa's network/resnet38d.py.

    (Saved before torch 0.4.1, psa's files have no num_batches_tracked entries.)
    """
    keys = {"conv1a.weight": (64, 3, 3, 3)}
    # ResBlock(in, mid, out, stride): conv_branch1 only when in != out or stride != 1
    plain = [
        ("b2", 64, 128, 128, 2),
        ("b2_1", 128, 128, 128, 1),
        ("b2_2", 128, 128, 128, 1),
        ("b3", 128, 256, 256, 2),
        ("b3_1", 256, 256, 256, 1),
        ("b3_2", 256, 256, 256, 1),
        ("b4", 256, 512, 512, 2),
    ]
    plain += [(f"b4_{i}", 512, 512, 512, 1) for i in range(1, 6)]
    plain += [("b5", 512, 512, 1024, 1), ("b5_1", 1024, 512, 1024, 1), ("b5_2", 1024, 512, 1024, 1)]
    for name, cin, mid, cout, stride in plain:
        keys.update(_bn_keys(f"{name}.bn_branch2a", cin))
        keys[f"{name}.conv_branch2a.weight"] = (mid, cin, 3, 3)
        keys.update(_bn_keys(f"{name}.bn_branch2b1", mid))
        keys[f"{name}.conv_branch2b1.weight"] = (cout, mid, 3, 3)
        if cin != cout or stride != 1:
            keys[f"{name}.conv_branch1.weight"] = (cout, cin, 1, 1)
    # ResBlock_bot(in, out): 1x1 to out/4, 3x3 to out/2, 1x1 to out, always conv_branch1
    for name, cin, cout in (("b6", 1024, 2048), ("b7", 2048, 4096)):
        keys.update(_bn_keys(f"{name}.bn_branch2a", cin))
        keys[f"{name}.conv_branch2a.weight"] = (cout // 4, cin, 1, 1)
        keys.update(_bn_keys(f"{name}.bn_branch2b1", cout // 4))
        keys[f"{name}.conv_branch2b1.weight"] = (cout // 2, cout // 4, 3, 3)
        keys.update(_bn_keys(f"{name}.bn_branch2b2", cout // 2))
        keys[f"{name}.conv_branch2b2.weight"] = (cout, cout // 2, 1, 1)
        keys[f"{name}.conv_branch1.weight"] = (cout, cin, 1, 1)
    keys.update(_bn_keys("bn7", 4096))
    return keys


PSA_CLS_HEAD = {"fc8.weight": (20, 4096, 1, 1)}  # resnet38_cls.py
PSA_AFF_HEAD = {
    "f8_3.weight": (64, 512, 1, 1),
    "f8_4.weight": (128, 1024, 1, 1),
    "f8_5.weight": (256, 4096, 1, 1),
    "f9.weight": (448, 448, 1, 1),
}  # resnet38_aff.py


def torchvision_resnet50_keys() -> dict[str, tuple]:
    """Key -> shape of torchvision's resnet50 state dict (fc included, as in its ImageNet file)."""
    keys = {"conv1.weight": (64, 3, 7, 7), **_bn_keys("bn1", 64), "bn1.num_batches_tracked": ()}
    inplanes = 64
    for layer, (planes, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=1):
        for i in range(blocks):
            p = f"layer{layer}.{i}"
            shapes = {
                "conv1": (planes, inplanes, 1, 1),
                "conv2": (planes, planes, 3, 3),
                "conv3": (planes * 4, planes, 1, 1),
            }
            for j, (conv, shape) in enumerate(shapes.items(), start=1):
                keys[f"{p}.{conv}.weight"] = shape
                keys.update(_bn_keys(f"{p}.bn{j}", shape[0]))
                keys[f"{p}.bn{j}.num_batches_tracked"] = ()
            if i == 0:
                keys[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                keys.update(_bn_keys(f"{p}.downsample.1", planes * 4))
                keys[f"{p}.downsample.1.num_batches_tracked"] = ()
            inplanes = planes * 4
    keys.update({"fc.weight": (1000, 2048), "fc.bias": (1000,)})
    return keys


def _shapes(state: dict) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}


def _indexed(keys: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """A state dict whose i-th tensor is filled with i, to see where each value lands."""
    return {k: torch.full(shape, float(i)) for i, (k, shape) in enumerate(keys.items())}


def _assert_names_mismatched_keys(load, keys: dict[str, tuple], missing: str, unexpected: str):
    """load(state) of an _indexed state without `missing` and with an `unexpected` key
    raises a ValueError naming both."""
    state = _indexed(keys)
    del state[missing]
    state[unexpected] = torch.zeros(1)
    match = rf"Missing keys: {re.escape(missing)}\. Unexpected keys: {re.escape(unexpected)}\."
    with pytest.raises(ValueError, match=match):
        load(state)


# ---------------------------------------------------------------------------------- backbones


@functools.cache
def _eval_backbone(name: str):
    torch.manual_seed(0)
    return build_backbone(name).eval()


def test_registry():
    assert sorted(BACKBONES) == ["resnet38", "resnet50", "tiny"]
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'"):
        build_backbone("vgg16")


@pytest.mark.parametrize(
    "name,size",
    [
        ("tiny", (32, 48)),
        ("tiny", (35, 41)),
        ("tiny", (1, 9)),
        ("resnet50", (24, 40)),
        ("resnet50", (17, 23)),
        ("resnet38", (24, 17)),
    ],
)
def test_backbone_strides(name, size):
    backbone = _eval_backbone(name)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        feats = backbone(x)
    assert len(feats) == 3
    expected = (math.ceil(size[0] / 8), math.ceil(size[1] / 8))
    for feat, channels in zip(feats, backbone.feature_channels):
        assert feat.shape == (1, channels, *expected)
        assert torch.isfinite(feat).all()


def test_feature_channels():
    assert build_backbone("tiny").feature_channels == (64, 96, 128)
    with torch.device("meta"):
        assert build_backbone("resnet50").feature_channels == (512, 1024, 2048)
        assert build_backbone("resnet38").feature_channels == (512, 1024, 4096)


def test_resnet50_torchvision_names(tmp_path):
    expected = torchvision_resnet50_keys()
    assert len(expected) == 320
    backbone = build_backbone("resnet50")
    state = backbone.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        k: v for k, v in expected.items() if not k.startswith("fc.")
    }
    # dilated like torchvision's replace_stride_with_dilation=[False, True, True]
    assert [b.conv2.dilation[0] for b in backbone.layer3] == [1, 2, 2, 2, 2, 2]
    assert [b.conv2.dilation[0] for b in backbone.layer4] == [2, 4, 4]
    assert backbone.layer3[0].downsample[0].stride == (1, 1)

    # a torchvision-style file (with fc.*) loads strictly; every value lands in its place
    path = tmp_path / "resnet50_imagenet.pth"
    torch.save(_indexed(expected), path)
    loaded = build_backbone("resnet50", weights=path)
    for i, k in enumerate(expected):
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked"):
            assert loaded.state_dict()[k].eq(float(i)).all(), k
    assert loaded.pretrained and loaded.frozen

    _assert_names_mismatched_keys(
        lambda state: build_backbone("resnet50", weights=state),
        expected,
        "layer2.1.conv2.weight",
        "layer2.1.conv9.weight",
    )
    wrong_shape = _indexed(expected)
    wrong_shape["layer1.0.conv1.weight"] = torch.zeros(64, 64, 3, 3)
    with pytest.raises(ValueError, match=r"shape mismatch in layer1\.0\.conv1\.weight"):
        build_backbone("resnet50", weights=wrong_shape)


def test_weights_file_errors(tmp_path):
    params = tmp_path / "ilsvrc-cls_rna-a1_cls1000_ep-0001.params"
    params.write_bytes(b"\x12\x01\x00\x00not a torch file")
    with pytest.raises(ValueError, match="MXNet .params file"):
        build_backbone("resnet38", weights=params)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        build_backbone("tiny", weights=tmp_path / "missing.pth")
    resnet50_file = tmp_path / "r50.pth"
    torch.save(_indexed(torchvision_resnet50_keys()), resnet50_file)
    with (
        torch.device("meta"),
        pytest.raises(ValueError, match="holds a 'resnet50' backbone, not 'resnet38'"),
    ):
        build_backbone("resnet38", weights=resnet50_file)


def test_resnet38_accepts_psa_imagenet_dict():
    # psa's convert_mxnet_to_torch output: backbone names, no num_batches_tracked
    state = _indexed(psa_resnet38_keys())
    with torch.device("meta"):
        backbone = build_backbone("resnet38", weights=state)
    assert backbone.pretrained and backbone.frozen
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert "conv1a.weight" in frozen and "b2_2.conv_branch2b1.weight" in frozen
    assert "b3.conv_branch2a.weight" not in frozen
    assert "b7.bn_branch2b2.weight" in frozen and "bn7.bias" in frozen


def test_freeze_keeps_batchnorm_statistics():
    backbone = build_backbone("tiny", freeze=True).train()
    bn = backbone.stage3[0][1]
    assert not bn.training and not bn.weight.requires_grad
    before = bn.running_mean.clone()
    backbone(torch.randn(2, 3, 32, 32) * 3 + 1)
    assert torch.equal(bn.running_mean, before)
    backbone.freeze(False).train()
    assert bn.training and bn.weight.requires_grad
    backbone(torch.randn(2, 3, 32, 32) * 3 + 1)
    assert not torch.equal(bn.running_mean, before)


# ------------------------------------------------------------------------------------- heads


def test_cam_net_logits_are_pooled_cams():
    net = CAMNet(build_backbone("tiny"), num_classes=5).eval()
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        logits = net(x)
        cams = net.cams(x)
        feat = net.backbone(x)[2]
    assert logits.shape == (2, 5) and cams.shape == (2, 5, 5, 7)
    # docs/method.md §1: logits = w . GAP(f); CAM = ReLU(w . f) with the same w
    class_maps = torch.einsum("kc,bchw->bkhw", net.fc8.weight[:, :, 0, 0], feat)
    torch.testing.assert_close(logits, class_maps.mean(dim=(2, 3)))
    torch.testing.assert_close(cams, class_maps.clamp_min(0))
    assert net.fc8.bias is None


def test_classification_loss():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 4.0]])
    labels = torch.tensor([[1, 0, 0], [0, 1, 1]])
    p = torch.sigmoid(logits)
    expected = -(labels * p.log() + (1 - labels) * (1 - p).log()).mean()
    torch.testing.assert_close(classification_loss(logits, labels), expected)
    with pytest.raises(ValueError, match="labels must have the logits' shape"):
        classification_loss(logits, labels[:, :2])


def test_affinity_net():
    net = AffinityNet(build_backbone("tiny")).eval()
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        feat = net(x)
        s3, s4, s5 = net.backbone(x)
        aff = net.affinity(x, radius=5)
    assert feat.shape == (2, 448, 6, 10)
    # docs/method.md §3: 1x1 convs to 64/128/256, ELU, concatenation, 1x1 to 448, ELU
    parts = [
        F.elu(F.conv2d(s, conv.weight))
        for s, conv in ((s3, net.f8_3), (s4, net.f8_4), (s5, net.f8_5))
    ]
    torch.testing.assert_close(feat, F.elu(F.conv2d(torch.cat(parts, 1), net.f9.weight)))
    assert [c.weight.shape[0] for c in (net.f8_3, net.f8_4, net.f8_5)] == [64, 128, 256]
    assert all(c.bias is None for c in (net.f8_3, net.f8_4, net.f8_5, net.f9))
    assert aff.shape == (2, 34, 6, 10)
    torch.testing.assert_close(aff, pairwise_affinity(feat, 5))


def _squares(cue: str, n: int, size: int, side: int, g: torch.Generator):
    """n noisy images with class 0 / class 1 squares present in turn: none, 0, 1, both.

    The classes are independent (not one per image), so "not class 1" is no evidence of
    class 0 and each CAM has to come from its own square. cue "colour": red vs blue
    squares; "texture": grey stripes, horizontal vs vertical (same mean colour).
    """
    x = torch.rand(n, 3, size, size, generator=g) * 0.4 + 0.3
    labels = torch.zeros(n, 2)
    boxes = {}
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    fills = {
        "colour": [
            torch.tensor([0.9, 0.1, 0.1])[:, None, None].expand(3, side, side),
            torch.tensor([0.1, 0.1, 0.9])[:, None, None].expand(3, side, side),
        ],
        "texture": [
            (0.1 + 0.8 * (yy // 2 % 2)).expand(3, side, side),
            (0.1 + 0.8 * (xx // 2 % 2)).expand(3, side, side),
        ],
    }[cue]
    for i in range(n):
        for c in (0, 1):
            if not (i >> c) & 1:
                continue
            while True:  # two squares never overlap
                y0, x0 = torch.randint(0, size - side, (2,), generator=g).tolist()
                if all(
                    abs(y0 - a) >= side or abs(x0 - b) >= side
                    for (j, _), (a, b) in boxes.items()
                    if j == i
                ):
                    break
            x[i, :, y0 : y0 + side, x0 : x0 + side] = fills[c]
            labels[i, c] = 1
            boxes[i, c] = (y0, x0)
    return (x - 0.5) / 0.25, labels, boxes


@pytest.mark.parametrize("cue", ["colour", "texture"])
def test_tiny_learns_and_localises(cue):
    """The tiny CAM network must classify squares by colour or texture and point at them."""
    torch.manual_seed(0)
    n, n_train, size, side = 128, 96, 48, 16
    x, labels, boxes = _squares(cue, n, size, side, torch.Generator().manual_seed(0))
    net = CAMNet(build_backbone("tiny"), num_classes=2)
    opt = torch.optim.SGD(param_groups(net, 0.05, 5e-4), lr=0.05, momentum=0.9)
    for _ in range(6):
        for b in range(0, n_train, 16):
            loss = classification_loss(net(x[b : b + 16]), labels[b : b + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        logits = net(x[n_train:])
        cams = net.cams(x[n_train:])
    assert ((logits > 0).float() == labels[n_train:]).float().mean() >= 0.95
    hits = total = 0
    for (i, c), (y0, x0) in boxes.items():
        if i < n_train:
            continue
        cam = cams[i - n_train, c]
        py, px = divmod(int(cam.argmax()), cam.shape[1])
        # the peak cell (8x8 pixels) must touch the square
        hits += (y0 - 8 < py * 8 < y0 + side) and (x0 - 8 < px * 8 < x0 + side)
        total += 1
    assert total == 32 and hits >= 29


# ------------------------------------------------------------------------------- psa's names


@pytest.mark.parametrize("network,head", [(CAMNet, PSA_CLS_HEAD), (AffinityNet, PSA_AFF_HEAD)])
def test_resnet38_psa_names(network, head):
    expected = {**psa_resnet38_keys(), **head}
    net = network(build_backbone("resnet38"))
    assert _shapes(psa_state_dict(net)) == expected
    # psa's files: bare, possibly via DataParallel ("module."), no num_batches_tracked
    state = _indexed(expected)
    load_psa_checkpoint(net, {"module." + k: v for k, v in state.items()})
    loaded = psa_state_dict(net)
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k
    # the module's own state dict round-trips too
    load_psa_checkpoint(net, psa_state_dict(net))
    load_checkpoint(net, psa_state_dict(net))


def test_psa_checkpoint_errors(tmp_path):
    cls_state = {**psa_resnet38_keys(), **PSA_CLS_HEAD}
    aff_state = {**psa_resnet38_keys(), **PSA_AFF_HEAD}
    with torch.device("meta"):
        cam_net = CAMNet(build_backbone("resnet38"))
        aff_net = AffinityNet(build_backbone("resnet38"))
        r50_cam = CAMNet(build_backbone("resnet50"))
    aff_file = tmp_path / "res38_aff.pth"
    torch.save(_indexed(aff_state), aff_file)
    with pytest.raises(ValueError, match="res38_aff.pth holds an AffinityNet, not a CAM network"):
        load_psa_checkpoint(cam_net, aff_file)
    with pytest.raises(ValueError, match="holds a CAM network .*load it into CAMNet"):
        load_psa_checkpoint(aff_net, _indexed(cls_state))
    with pytest.raises(
        ValueError, match="holds a 'resnet38' backbone, but the model's backbone is 'resnet50'"
    ):
        load_psa_checkpoint(r50_cam, _indexed(cls_state))
    _assert_names_mismatched_keys(
        lambda state: load_psa_checkpoint(cam_net, state),
        cls_state,
        "b4_3.bn_branch2b1.running_var",
        "b8.weight",
    )
    assert detect_backbone(cls_state) == "resnet38"
    assert detect_backbone({"backbone.layer1.0.conv1.weight": 0}) == "resnet50"


# --------------------------------------------------------------------------------- lr groups


def _check_cover(net, groups):
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in net.parameters() if p.requires_grad}


def test_param_groups_pretrained():
    weights = {k: v for k, v in build_backbone("resnet50").state_dict().items()}
    net = AffinityNet(build_backbone("resnet50", weights=weights))
    groups = param_groups(net, 0.1, 5e-4)
    _check_cover(net, groups)
    assert [g["name"] for g in groups] == [
        "pretrained_weight",
        "pretrained_bias",
        "new_weight",
        "new_bias",
    ]
    assert [g["lr"] for g in groups] == pytest.approx([0.1, 0.2, 1.0, 2.0])
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0, 5e-4, 0.0]
    head = {id(c.weight) for c in (net.f8_3, net.f8_4, net.f8_5, net.f9)}
    assert {id(p) for p in groups[2]["params"]} == head and not groups[3]["params"]
    # frozen: every BatchNorm parameter and the stem; the rest of the backbone trains at 1x
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert "backbone.conv1.weight" in frozen and "backbone.layer4.2.bn3.weight" in frozen
    assert all(".bn" in n or "downsample.1" in n or n == "backbone.conv1.weight" for n in frozen)
    assert len(groups[0]["params"]) == 52  # the 53 convs of ResNet-50 but conv1
    torch.optim.SGD(groups, lr=0.1, momentum=0.9)


def test_param_groups_from_scratch():
    net = CAMNet(build_backbone("tiny"))
    groups = net.param_groups(0.1, 5e-4)
    _check_cover(net, groups)
    assert not groups[2]["params"] and not groups[3]["params"]
    assert any(p is net.fc8.weight for p in groups[0]["params"])
    assert all(p.dim() == 1 for p in groups[1]["params"])
    torch.optim.SGD(groups, lr=0.1, momentum=0.9).step()


# ------------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    net = CAMNet(build_backbone("tiny"), num_classes=7)
    with torch.no_grad():
        net.fc8.weight.normal_()
    path = tmp_path / "cam" / "tiny.pth"
    save_checkpoint(net, path, epoch=3, lr=0.1)
    other = CAMNet(build_backbone("tiny"), num_classes=7)
    assert load_checkpoint(other, path) == {"epoch": 3, "lr": 0.1}
    assert torch.equal(other.fc8.weight, net.fc8.weight)
    rebuilt = build_from_checkpoint(path)
    assert isinstance(rebuilt, CAMNet) and rebuilt.num_classes == 7 and not rebuilt.training
    assert torch.equal(rebuilt.fc8.weight, net.fc8.weight)

    with torch.device("meta"):
        r50 = CAMNet(build_backbone("resnet50"), num_classes=7)
    with pytest.raises(ValueError, match="was trained with backbone 'tiny', not 'resnet50'"):
        load_checkpoint(r50, path)
    with pytest.raises(ValueError, match="holds a CAM network .*, not an AffinityNet"):
        load_checkpoint(AffinityNet(build_backbone("tiny")), path)
    with pytest.raises(ValueError, match="holds a CAM network for 7 classes, but the model has 20"):
        load_checkpoint(CAMNet(build_backbone("tiny"), num_classes=20), path)
    # psa's bare state dict of another class count: the same sentence
    torch.save(psa_state_dict(net), tmp_path / "bare7.pth")
    with pytest.raises(ValueError, match="holds a CAM network for 7 classes, but the model has 20"):
        load_checkpoint(CAMNet(build_backbone("tiny"), num_classes=20), tmp_path / "bare7.pth")

    aff = AffinityNet(build_backbone("tiny"))
    bare = tmp_path / "aff_bare.pth"
    torch.save(psa_state_dict(aff), bare)
    rebuilt = build_from_checkpoint(bare)
    assert isinstance(rebuilt, AffinityNet) and rebuilt.backbone.name == "tiny"
    assert torch.equal(rebuilt.f9.weight, aff.f9.weight)

"""affext.psa, depth 3: psa's scripts (`affext psa ...`) and psa's MXNet ImageNet weights.

The end-to-end runs use the tiny backbone in place of ResNet-38 (scripts.BACKBONE), so that
they take seconds on two cores; what is ResNet-38's own (psa's names, strict loads, the MXNet
mapping) is tested on ResNet-38 itself without running it. The .params files are written here
by a writer of MXNet's NDArray list format, independent of the reader.
"""

from __future__ import annotations

import functools
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import affext.psa as psa
from affext.data import SynthConfig, make_synthetic_voc
from affext.data.transforms import normalize
from affext.models import (
    AffinityNet,
    CAMNet,
    build_backbone,
    build_from_checkpoint,
    load_psa_checkpoint,
    psa_state_dict,
)
from affext.models.backbones.resnet38 import ResNet38
from affext.psa import cli, scripts

pytestmark = pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")


# ------------------------------------------------------------------ MXNet NDArray list writer
def _mx_array(a: np.ndarray, version: str) -> bytes:
    flags = {np.float32: 0, np.float64: 1, np.float16: 2, np.uint8: 3, np.int32: 4, np.int64: 6}
    flag = flags[a.dtype.type]
    if version == "legacy":  # ndim in place of the magic, uint32 dims
        head = struct.pack(f"<I{a.ndim}I", a.ndim, *a.shape)
    elif version == "v1":
        head = struct.pack(f"<II{a.ndim}q", 0xF993FAC8, a.ndim, *a.shape)
    else:  # v2: storage type 0 (dense)
        head = struct.pack(f"<Iii{a.ndim}q", 0xF993FAC9, 0, a.ndim, *a.shape)
    ctx = struct.pack("<ii", 2, 0)  # saved from a GPU: read onto the CPU anyway
    return head + ctx + struct.pack("<i", flag) + a.astype(a.dtype.newbyteorder("<")).tobytes()


def write_params(path: Path, arrays: dict[str, np.ndarray] | list, version: str = "v2") -> None:
    named = isinstance(arrays, dict)
    values = list(arrays.values()) if named else list(arrays)
    with open(path, "wb") as f:
        f.write(struct.pack("<QQQ", 0x112, 0, len(values)))
        for a in values:
            f.write(_mx_array(np.asarray(a), version))
        names = list(arrays) if named else []
        f.write(struct.pack("<Q", len(names)))
        for n in names:
            f.write(struct.pack("<Q", len(n.encode())) + n.encode())


def mxnet_name(psa_name: str) -> str:
    """MXNet's name in the ResNet-38 A1 model of one of psa's parameter names."""
    bn = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean"}
    bn["running_var"] = "moving_var"
    if psa_name == "conv1a.weight":
        return "arg:conv1a_weight"
    parts = psa_name.split(".")
    if parts[0] == "bn7":
        prefix = "aux" if parts[1].startswith("running") else "arg"
        return f"{prefix}:bn7_{bn[parts[1]]}"
    block, layer, param = parts
    stage, _, index = block[1:].partition("_")
    unit = f"{stage}b{index}" if index else f"{stage}a"
    kind, branch = layer.split("_", 1)
    if kind == "conv":
        return f"arg:res{unit}_{branch}_weight"
    prefix = "aux" if param.startswith("running") else "arg"
    return f"{prefix}:bn{unit}_{branch}_{bn[param]}"


@functools.cache
def resnet38_shapes() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in ResNet38().state_dict().items()}


def resnet38_names() -> list[str]:
    return [k for k in resnet38_shapes() if not k.endswith("num_batches_tracked")]


@pytest.mark.parametrize("version", ["legacy", "v1", "v2"])
def test_read_params_versions_and_dtypes(tmp_path, version):
    rng = np.random.default_rng(0)
    arrays = {
        "arg:a_weight": rng.standard_normal((3, 2, 1, 2)).astype(np.float32),
        "aux:b_moving_var": rng.random(5).astype(np.float64),
        "arg:c": rng.standard_normal((2, 3)).astype(np.float16),
        "arg:d": np.arange(6, dtype=np.int64).reshape(3, 2),
        "arg:e": np.arange(4, dtype=np.uint8),
    }
    path = tmp_path / "w.params"
    write_params(path, arrays, version)
    got = psa.read_params(path)
    assert list(got) == list(arrays)
    for name, a in arrays.items():
        assert got[name].dtype == torch.from_numpy(a).dtype
        assert np.array_equal(got[name].numpy(), a)
    write_params(path, list(arrays.values()), version)
    assert list(psa.read_params(path)) == ["0", "1", "2", "3", "4"]


def test_read_params_v3_scalar_and_errors(tmp_path):
    path = tmp_path / "w.params"
    with open(path, "wb") as f:  # v3: numpy shape semantics, ndim 0 is a scalar
        f.write(struct.pack("<QQQ", 0x112, 0, 1))
        f.write(struct.pack("<Iii", 0xF993FACA, 0, 0) + struct.pack("<iii", 1, 0, 0))
        f.write(struct.pack("<f", 2.5) + struct.pack("<Q", 1) + struct.pack("<Q", 5) + b"arg:s")
    got = psa.read_params(path)
    assert got["arg:s"].shape == () and got["arg:s"].item() == 2.5

    bad = tmp_path / "bad.params"
    bad.write_bytes(b"\x00" * 32)
    with pytest.raises(ValueError, match="not an MXNet .params file .*0x112"):
        psa.read_params(bad)
    write_params(bad, {"arg:x": np.zeros((4, 4), np.float32)})
    bad.write_bytes(bad.read_bytes()[:-40])
    with pytest.raises(ValueError, match="ends early"):
        psa.read_params(bad)
    with open(bad, "wb") as f:
        f.write(struct.pack("<QQQ", 0x112, 0, 1) + struct.pack("<Ii", 0xF993FAC9, 1))
    with pytest.raises(ValueError, match="sparse"):
        psa.read_params(bad)
    with pytest.raises(FileNotFoundError, match="nope.params"):
        psa.read_params(tmp_path / "nope.params")


def test_mxnet_names_map_to_resnet38():
    names = resnet38_names()
    params = {mxnet_name(n): torch.full((1,), float(i)) for i, n in enumerate(names)}
    params["arg:linear1000_weight"] = torch.zeros(1)
    params["arg:linear1000_bias"] = torch.zeros(1)
    state = psa.mxnet_to_resnet38(params)
    assert sorted(state) == sorted(names)
    for i, n in enumerate(names):
        assert state[n].item() == i, n
    # the names psa's converter relies on, spelled out
    assert mxnet_name("b4_5.bn_branch2b1.running_var") == "aux:bn4b5_branch2b1_moving_var"
    assert mxnet_name("b6.conv_branch2b2.weight") == "arg:res6a_branch2b2_weight"
    with pytest.raises(ValueError, match="unexpected MXNet parameter 'arg:foo_weight'"):
        psa.mxnet_to_resnet38({"arg:foo_weight": torch.zeros(1)})


@pytest.fixture(scope="module")
def imagenet_params(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """A full-size ResNet-38 .params file (float16, as the format allows); tensor i is filled
    with i (exact in float16), so each lands where it can be checked."""
    shapes = resnet38_shapes()
    arrays = {
        mxnet_name(name): np.full(shapes[name], float(i), np.float16)
        for i, name in enumerate(resnet38_names())
    }
    arrays["arg:linear1000_weight"] = np.zeros((1000, 4096), np.float16)
    path = tmp_path_factory.mktemp("imagenet") / "ilsvrc-cls_rna-a1_cls1000_ep-0001.params"
    write_params(path, arrays)
    return path, arrays


def test_convert_weights_command(imagenet_params, tmp_path):
    src, arrays = imagenet_params
    out = tmp_path / "res38_imagenet.pth"
    assert cli.main(["convert_weights", str(src), str(out)]) == 0
    state = torch.load(out, weights_only=True)
    assert sorted(state) == sorted(resnet38_names())
    for i, name in enumerate(resnet38_names()):
        assert state[name].dtype == torch.float32 and state[name].shape == resnet38_shapes()[name]
        assert state[name].flatten()[0].item() == i, name
    with torch.device("meta"):  # strict load of every tensor, by name and shape
        assert build_backbone("resnet38", weights=str(out)).pretrained
    # train_cls / train_aff --weights X.params go through the same conversion
    work = tmp_path / "work"
    work.mkdir()
    assert scripts.backbone_weights(str(src), work) == str(work / "imagenet_resnet38.pth")
    assert torch.load(work / "imagenet_resnet38.pth", weights_only=True).keys() == state.keys()


def test_convert_weights_errors(tmp_path, capsys):
    path = tmp_path / "partial.params"
    write_params(path, {"arg:conv1a_weight": np.zeros((64, 3, 3, 3), np.float32)})
    assert cli.main(["convert_weights", str(path), str(tmp_path / "o.pth")]) == 2
    assert "is not psa's ResNet-38. Missing: b2.bn_branch2a.weight" in capsys.readouterr().err
    assert not (tmp_path / "o.pth").exists()
    assert cli.main(["convert_weights", str(tmp_path / "x.caffemodel"), "o.pth"]) == 2
    assert "expected an MXNet .params file" in capsys.readouterr().err


def test_session_state_dicts_load_into_psa_named_networks(tmp_path):
    """What train_cls / train_aff save loads strictly into networks with psa's names."""

    class PsaClsNet(ResNet38):  # psa's resnet38_cls.Net layout: backbone names at the top
        def __init__(self):
            super().__init__()
            self.dropout7 = torch.nn.Dropout2d(0.5)
            self.fc8 = torch.nn.Conv2d(4096, 20, 1, bias=False)

    class PsaAffNet(ResNet38):  # psa's resnet38_aff.Net
        def __init__(self):
            super().__init__()
            self.f8_3 = torch.nn.Conv2d(512, 64, 1, bias=False)
            self.f8_4 = torch.nn.Conv2d(1024, 128, 1, bias=False)
            self.f8_5 = torch.nn.Conv2d(4096, 256, 1, bias=False)
            self.f9 = torch.nn.Conv2d(448, 448, 1, bias=False)

    for model, stand_in in ((CAMNet, PsaClsNet), (AffinityNet, PsaAffNet)):
        with torch.device("meta"):
            net = model(build_backbone("resnet38"))
        net = net.to_empty(device="cpu")  # real tensors without the cost of initialising them
        for i, t in enumerate(net.state_dict().values()):
            t.fill_(i)
        path = tmp_path / f"{model.__name__}.pth"
        scripts.save_psa_state_dict(net, path)
        state = torch.load(path, weights_only=True)
        with torch.device("meta"):
            target = stand_in()
        target.load_state_dict(state, strict=True, assign=True)
        assert torch.equal(target.b4_2.conv_branch2a.weight, net.backbone.b4_2.conv_branch2a.weight)
        # and back into affext's network through the psa checkpoint reader
        with torch.device("meta"):
            load_psa_checkpoint(model(build_backbone("resnet38")), path)
        del net, state, target


# ------------------------------------------------------------------ the scripts end to end
@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    # psa's scripts are VOC's: the set on VOC's 20 class indices, without its classes.txt
    cfg = SynthConfig(num_train=3, num_val=0, min_size=72, max_size=80, seed=2, voc_indices=True)
    root = make_synthetic_voc(tmp_path_factory.mktemp("voc"), cfg, progress=False)
    ids = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    lines = [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in ids]  # psa's lists
    (root / "train_aug.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(scripts, "BACKBONE", "tiny")


def run(argv: list[str]) -> None:
    assert cli.main(argv + ["--quiet"]) == 0


def _ids(voc: Path) -> list[str]:
    return (voc / "ImageSets/Segmentation/train.txt").read_text().split()


@pytest.fixture(scope="module")
def sessions(voc, tmp_path_factory):
    """train_cls -> infer_cls -> train_aff -> infer_aff, psa's commands on the tiny backbone."""
    mp = pytest.MonkeyPatch()
    mp.setattr(scripts, "BACKBONE", "tiny")
    work = tmp_path_factory.mktemp("psa")
    torch.manual_seed(0)
    imagenet = build_backbone("tiny").state_dict()
    imagenet["fc8.weight"] = torch.zeros(20, 128, 1, 1)  # psa loads with strict=False
    torch.save(imagenet, work / "imagenet.pth")
    common = ["--voc12_root", str(voc), "--num_workers", "0", "--device", "cpu"]
    train = ["--train_list", str(voc / "train_aug.txt"), "--max_epoches", "1"]
    train += ["--batch_size", "3"]
    out = {k: work / k for k in ("cam", "la", "ha", "cam_pred", "rw")}
    run(["train_cls", "--weights", str(work / "imagenet.pth"), "--session_name",
         str(work / "cls"), "--crop_size", "48", *train, *common])  # fmt: skip
    run(["infer_cls", "--weights", str(work / "cls.pth"), "--infer_list",
         str(voc / "train_aug.txt"), "--out_cam", str(out["cam"]), "--out_la_crf",
         str(out["la"]), "--out_ha_crf", str(out["ha"]), "--out_cam_pred",
         str(out["cam_pred"]), *common])  # fmt: skip
    run(["train_aff", "--weights", str(work / "imagenet.pth"), "--session_name",
         str(work / "aff"), "--la_crf_dir", str(out["la"]), "--ha_crf_dir", str(out["ha"]),
         "--crop_size", "72", *train, *common])  # fmt: skip
    run(["infer_aff", "--weights", str(work / "aff.pth"), "--infer_list",
         str(voc / "train_aug.txt"), "--cam_dir", str(out["cam"]), "--out_rw",
         str(out["rw"]), *common])  # fmt: skip
    yield work, out
    mp.undo()


def test_train_writes_psa_state_dicts(sessions, tiny):
    work, _ = sessions
    for name, model in (("cls", CAMNet), ("aff", AffinityNet)):
        state = torch.load(work / f"{name}.pth", weights_only=True)
        net = model(build_backbone("tiny"))
        assert set(state) == set(psa_state_dict(net))  # psa's layout: no "backbone." prefix
        load_psa_checkpoint(net, state)  # strict
        assert (
            Path(f"{work / name}.affext") / f"{'cam' if name == 'cls' else 'aff'}_net.pt"
        ).is_file()
    # the ImageNet file's classifier was dropped (psa's strict=False), its backbone kept
    assert (Path(f"{work / 'cls'}.affext") / "backbone_weights.pth").is_file()


def test_infer_cls_writes_psa_files(voc, sessions):
    _, out = sessions
    from affext.data import VOCDataset

    data = VOCDataset(voc)
    for i in _ids(voc):
        image = data.load_image(i)
        label = data.image_labels(i)
        present = [int(c) for c in np.nonzero(label)[0]]
        cam = np.load(out["cam"] / f"{i}.npy", allow_pickle=True).item()
        assert sorted(cam) == present  # keyed by 0-based class
        for v in cam.values():
            assert v.shape == image.shape[:2] and v.dtype == np.float32
            assert 0.99 < v.max() <= 1.0 and v.min() >= 0
        for kind in ("la", "ha"):
            crf = np.load(out[kind] / f"{i}.npy", allow_pickle=True).item()
            assert sorted(crf) == [0] + [c + 1 for c in present]  # 0 = bg, class + 1
        with Image.open(out["cam_pred"] / f"{i}.png") as im:
            assert im.mode == "L"
            pred = np.asarray(im)
        stack = np.zeros((21,) + image.shape[:2], np.float32)
        stack[0] = 0.2
        for c, v in cam.items():
            stack[c + 1] = v
        assert np.array_equal(pred, np.argmax(stack, axis=0))


def psa_infer_aff_reference(net, image: np.ndarray, cam: dict, alpha=16, beta=8, logt=8):
    """psa infer_aff for one image: pad to a multiple of 8, dense matrix, logt squarings."""
    h, w = image.shape[:2]
    hp, wp = -(-h // 8) * 8, -(-w // 8) * 8
    x = F.pad(torch.from_numpy(normalize(image))[None], (0, wp - w, 0, hp - h))
    scores = np.zeros((21, h, w), np.float32)
    for k, v in cam.items():
        scores[k + 1] = v
    scores[0] = (1 - scores[1:].max(axis=0)) ** alpha
    scores = F.avg_pool2d(F.pad(torch.from_numpy(scores), (0, wp - w, 0, hp - h)), 8, 8)
    with torch.no_grad():
        feat = net(x)
        fh, fw = feat.shape[-2:]
        aff = psa.affinity(feat)
        mat = psa.dense_affinity_matrix(aff, fh, fw) ** beta
        trans = mat / mat.sum(dim=0, keepdim=True)
        for _ in range(logt):
            trans = trans @ trans
        rw = (scores.reshape(21, -1) @ trans).reshape(1, 21, fh, fw)
        rw = F.interpolate(rw, (hp, wp), mode="bilinear", align_corners=False)
    return rw[0].argmax(dim=0).numpy().astype(np.uint8)[:h, :w]


@pytest.mark.parametrize("flags", [{}, {"alpha": 4, "beta": 3, "logt": 2}])
def test_infer_aff_gives_psa_pngs(voc, sessions, tiny, tmp_path, flags):
    work, out = sessions
    from affext.data import VOCDataset

    rw_dir = out["rw"]
    if flags:
        rw_dir = tmp_path / "rw"
        argv = ["infer_aff", "--weights", str(work / "aff.pth"), "--cam_dir", str(out["cam"])]
        argv += ["--infer_list", str(voc / "train_aug.txt"), "--out_rw", str(rw_dir)]
        argv += ["--voc12_root", str(voc), "--num_workers", "0", "--device", "cpu"]
        run(argv + [x for k, v in flags.items() for x in (f"--{k}", str(v))])
    data = VOCDataset(voc)
    net = AffinityNet(build_backbone("tiny"))
    load_psa_checkpoint(net, work / "aff.pth")
    net.eval()
    for i in _ids(voc):
        with Image.open(rw_dir / f"{i}.png") as im:
            assert im.mode == "L"
            got = np.asarray(im)
        image = data.load_image(i)
        cam = np.load(out["cam"] / f"{i}.npy", allow_pickle=True).item()
        ref = psa_infer_aff_reference(net, image, cam, **flags)
        assert got.shape == ref.shape
        assert (got == ref).mean() >= 0.999
        assert set(np.unique(got)) <= {0} | {c + 1 for c in cam}


def test_script_errors(voc, tmp_path, tiny, capsys):
    common = ["--voc12_root", str(voc), "--device", "cpu", "--quiet"]
    cases = [
        (["infer_cls", "--weights", "w.pth", "--network", "network.vgg16_cls",
          "--out_cam", "x"], "supports psa's ResNet-38 only"),
        (["infer_aff", "--weights", "w.pth", "--network", "network.resnet38_cls", "--cam_dir",
          "c", "--out_rw", "o"], "is the other network; this command takes network.resnet38_aff"),
        (["train_cls", "--weights", "vgg16_20M.caffemodel"], "Caffe VGG-16 weights"),
        (["infer_cls", "--weights", "w.pth"], "nothing to write"),
        (["infer_aff", "--weights", "x.params", "--cam_dir", "c", "--out_rw", "o",
          "--infer_list", str(voc / "train_aug.txt")], "inference needs the trained network"),
        (["infer_aff", "--weights", str(tmp_path / "none.pth"), "--cam_dir", "c",
          "--out_rw", "o", "--infer_list", str(voc / "train_aug.txt")], "none.pth"),
        (["infer_cls", "--weights", "w.pth", "--out_cam", "c", "--infer_list",
          str(tmp_path / "missing.txt")], "missing.txt"),
    ]  # fmt: skip
    for argv, message in cases:
        assert cli.main(argv + common) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_affext_checkpoint_reader_takes_psa_session_files(sessions):
    """affext's checkpoint reader builds the network of a psa state dict by itself."""
    work, _ = sessions
    for name, model in (("cls", CAMNet), ("aff", AffinityNet)):
        net = build_from_checkpoint(work / f"{name}.pth")
        assert type(net) is model and net.backbone.name == "tiny"
        state = torch.load(work / f"{name}.pth", weights_only=True)
        for k, v in psa_state_dict(net).items():
            assert torch.equal(v, state[k]), k


def test_psa_flags_and_defaults():
    import argparse

    parser = argparse.ArgumentParser(prog="affext")
    cli.add_parser(parser.add_subparsers(dest="command"))
    required = {
        "train_cls": ["--weights", "w", "--voc12_root", "v"],
        "train_aff": ["--weights", "w", "--voc12_root", "v", "--la_crf_dir", "l"]
        + ["--ha_crf_dir", "h"],
        "infer_cls": ["--weights", "w", "--voc12_root", "v"],
        "infer_aff": ["--weights", "w", "--voc12_root", "v", "--cam_dir", "c", "--out_rw", "o"],
    }
    psa_defaults = {  # psa's train_cls.py, train_aff.py, infer_cls.py, infer_aff.py
        "train_cls": dict(batch_size=16, max_epoches=15, lr=0.1, num_workers=8, wt_dec=5e-4)
        | dict(train_list="voc12/train_aug.txt", val_list="voc12/val.txt", crop_size=448),
        "train_aff": dict(batch_size=8, max_epoches=8, lr=0.1, num_workers=8, wt_dec=5e-4)
        | dict(train_list="voc12/train_aug.txt", crop_size=448),
        "infer_cls": dict(infer_list="voc12/val.txt", num_workers=8, low_alpha=4, high_alpha=32)
        | dict(out_cam=None, out_la_crf=None, out_ha_crf=None, out_cam_pred=None),
        "infer_aff": dict(infer_list="voc12/train_aug.txt", num_workers=8, alpha=16, beta=8)
        | dict(logt=8),
    }
    for command, argv in required.items():
        args = vars(parser.parse_args(["psa", command, *argv]))
        for key, value in psa_defaults[command].items():
            assert args[key] == value and type(args[key]) is type(value), (command, key)
        kind = command.split("_")[1]
        assert args["network"] == f"network.resnet38_{kind}" and args["device"] == "auto"

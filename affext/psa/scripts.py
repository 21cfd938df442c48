"""psa's four scripts on affext's stages, with psa's inputs and outputs.

Each function takes the argparse namespace of `affext psa <command>` (affext/psa/cli.py: psa's
flags, spellings and defaults) and runs the affext stage that does the work:

    train_cls -> stages.train_cam        infer_cls -> stages.make_cam (+ make_aff_labels)
    train_aff -> stages.train_aff        infer_aff -> stages.make_rw

Files are psa's: list files, voc12/cls_labels.npy (read from the working directory, as psa
does), its bare state dicts (res38_cls.pth, res38_aff.pth and <session_name>.pth, which psa's
Net loads with strict=True), CAM dicts {class 0..19: map}, la/ha dicts {0: bg, class + 1: map},
and grayscale uint8 class-index PNGs. The ImageNet start is psa's MXNet .params file, read
without mxnet.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.voc import load_label_png, read_id_list
from ..files import atomic_save
from ..models import build_backbone, psa_state_dict
from ..models.backbones.base import read_state_dict
from ..models.trained import load_aff_net, load_cam_net
from ..stages.aff_labels import AffLabelsConfig, make_aff_labels
from ..stages.make_cam import MakeCamConfig, make_cam
from ..stages.make_rw import MakeRwConfig, make_rw
from ..stages.train_aff import TrainAffConfig
from ..stages.train_aff import train_aff as run_train_aff
from ..stages.train_cam import TrainCamConfig
from ..stages.train_cam import train_cam as run_train_cam
from .mxnet import mxnet_to_resnet38

NETWORKS = {"cls": "network.resnet38_cls", "aff": "network.resnet38_aff"}
BACKBONE = "resnet38"
# psa reads the image-level labels from this path, relative to where it runs
PSA_CLS_LABELS = Path("voc12") / "cls_labels.npy"


# -- arguments ---------------------------------------------------------------------------
def check_network(network: str, kind: str) -> None:
    """Accept psa's ResNet-38 network name for `kind` ("cls" or "aff"), refuse the rest."""
    wanted = NETWORKS[kind]
    if network == wanted:
        return
    if "vgg16" in network:
        raise ValueError(
            f"--network {network}: affext psa supports psa's ResNet-38 only "
            f"(--network {wanted}); the VGG-16 networks and their .caffemodel weights "
            "are not supported"
        )
    other = NETWORKS["aff" if kind == "cls" else "cls"]
    if network == other:
        raise ValueError(f"--network {network} is the other network; this command takes {wanted}")
    raise ValueError(f"unknown --network {network!r}: affext psa supports {wanted}")


def check_weights_name(weights: str) -> None:
    if weights.endswith(".caffemodel"):
        raise ValueError(
            f"--weights {weights}: Caffe VGG-16 weights are not supported; affext psa runs "
            "psa's ResNet-38 (ImageNet: ilsvrc-cls_rna-a1_cls1000_ep-0001.params, or a "
            "torch state dict such as res38_cls.pth)"
        )


def _workers(n: int) -> int:
    """psa's --num_workers, capped at this machine's cores (0 runs in the main process)."""
    return max(0, min(int(n), os.cpu_count() or 1))


def _label_fields() -> dict:
    """psa reads voc12/cls_labels.npy from the working directory; otherwise the dataset's."""
    if PSA_CLS_LABELS.is_file():
        return {"label_source": "npy", "cls_labels": str(PSA_CLS_LABELS)}
    return {"label_source": "auto", "cls_labels": None}


# -- weights -----------------------------------------------------------------------------
def _backbone_keys() -> dict[str, tuple[int, ...]]:
    """Names and shapes of the resnet38 backbone's state, without allocating it."""
    with torch.device("meta"):
        backbone = build_backbone(BACKBONE)
    return {k: tuple(v.shape) for k, v in backbone.state_dict().items()}


def check_resnet38_state(state: dict[str, torch.Tensor], source: str) -> None:
    """Raise ValueError unless `state` holds every resnet38 parameter with its shape."""
    expected = _backbone_keys()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(v.shape)} (expected {expected[k]})"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != expected[k]
    ]
    if missing or unexpected or wrong:
        parts = [f"{source} is not psa's ResNet-38."]
        for what, keys in (("Missing", missing), ("Unexpected", unexpected), ("Wrong", wrong)):
            if keys:
                more = f", ... ({len(keys)} in all)" if len(keys) > 6 else ""
                parts.append(f"{what}: {', '.join(keys[:6])}{more}.")
        raise ValueError(" ".join(parts))


def convert_params(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, torch.Tensor]:
    """psa's MXNet ImageNet ResNet-38 (.params) -> a torch state dict file in psa's names."""
    state = {k: v.float() for k, v in mxnet_to_resnet38(src).items()}
    check_resnet38_state(state, f"MXNet weights file {os.fspath(src)}")
    atomic_save(dst, lambda f: torch.save(state, f))
    return state


def backbone_weights(weights: str, work: Path) -> str:
    """A resnet38 backbone state-dict file for the training stages, from psa's --weights.

    .params: converted once to WORK/imagenet_resnet38.pth. A torch state dict is read as psa
    does with strict=False: its backbone parameters are kept (a classifier or AffinityNet
    head is dropped); if it holds nothing else it is used as it is.
    """
    check_weights_name(weights)
    if weights.endswith(".params"):
        out = work / "imagenet_resnet38.pth"
        if not out.is_file():
            convert_params(weights, out)
        return str(out)
    state = read_state_dict(weights)
    expected = _backbone_keys()
    kept = {k: v for k, v in state.items() if k in expected}
    if not kept:
        raise ValueError(
            f"--weights {weights} holds no ResNet-38 parameter (conv1a.weight, b2.*, ...): "
            "give psa's ImageNet .params file or a ResNet-38 state dict"
        )
    if len(kept) == len(state):
        return weights
    out = work / "backbone_weights.pth"
    atomic_save(out, lambda f: torch.save(kept, f))
    return str(out)


def check_inference_weights(kind: str, weights: str) -> None:
    """--weights of an infer command must be a trained network's file."""
    check_weights_name(weights)
    if weights.endswith(".params"):
        raise ValueError(
            f"--weights {weights} is an ImageNet MXNet file; inference needs the trained "
            f"network (psa's res38_{kind}.pth or train_{kind}'s <session_name>.pth)"
        )
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"--weights {weights}: no such file")


def save_psa_state_dict(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """model's weights as psa saves them: a bare state dict in psa's names."""
    state = {k: v.detach().cpu() for k, v in psa_state_dict(model).items()}
    atomic_save(path, lambda f: torch.save(state, f))


# -- outputs -----------------------------------------------------------------------------
def save_gray_png(path: str | os.PathLike, label: np.ndarray) -> None:
    """psa's prediction PNG: an (H, W) uint8 class-index image, grayscale ("L")."""
    image = Image.fromarray(np.asarray(label, np.uint8), mode="L")
    atomic_save(path, lambda f: image.save(f, format="PNG"))


def _export_pngs(src_dir: Path, ids: list[str], out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    for i in ids:
        save_gray_png(Path(out_dir) / f"{i}.png", load_label_png(src_dir / f"{i}.png"))


def _export_files(src_dir: Path, ids: list[str], out_dir: str, suffix: str = ".npy") -> None:
    os.makedirs(out_dir, exist_ok=True)
    for i in ids:
        shutil.move(str(src_dir / f"{i}{suffix}"), os.path.join(out_dir, f"{i}{suffix}"))


# -- the four scripts --------------------------------------------------------------------
def infer_cls(args) -> None:
    """psa infer_cls.py: multi-scale CAMs, CAM-only predictions, la / ha dCRF labels."""
    check_network(args.network, "cls")
    outputs = (args.out_cam, args.out_la_crf, args.out_ha_crf, args.out_cam_pred)
    if all(o is None for o in outputs):
        raise ValueError(
            "nothing to write: give at least one of --out_cam, --out_la_crf, --out_ha_crf, "
            "--out_cam_pred"
        )
    ids = read_id_list(args.infer_list)
    check_inference_weights("cls", args.weights)
    workers = _workers(args.num_workers)
    progress = not getattr(args, "quiet", False)
    with tempfile.TemporaryDirectory(prefix="affext-psa-cam-") as tmp:
        cfg = MakeCamConfig(
            backbone=BACKBONE, num_workers=workers, device=args.device, **_label_fields()
        )
        out = Path(tmp)
        make_cam(args.voc12_root, ids, args.weights, out / "make_cam", cfg, progress=progress)
        cam_dir = out / "make_cam" / "cam"
        if args.out_la_crf is not None or args.out_ha_crf is not None:
            aff_cfg = AffLabelsConfig(
                alpha_low=float(args.low_alpha),
                alpha_high=float(args.high_alpha),
                num_workers=workers,
                device=args.device,
            )
            make_aff_labels(args.voc12_root, ids, cam_dir, out / "aff", aff_cfg, progress=progress)
            if args.out_la_crf is not None:
                _export_files(out / "aff" / "la", ids, args.out_la_crf)
            if args.out_ha_crf is not None:
                _export_files(out / "aff" / "ha", ids, args.out_ha_crf)
        if args.out_cam_pred is not None:
            _export_pngs(out / "make_cam" / "cam_pred", ids, args.out_cam_pred)
        if args.out_cam is not None:
            _export_files(cam_dir, ids, args.out_cam)


def infer_aff(args) -> None:
    """psa infer_aff.py: random walk of the CAMs, pseudo-label PNGs in --out_rw."""
    check_network(args.network, "aff")
    if args.logt < 0 or args.logt > 30:
        raise ValueError(f"--logt must be in [0, 30], got {args.logt}")
    ids = read_id_list(args.infer_list)
    check_inference_weights("aff", args.weights)
    progress = not getattr(args, "quiet", False)
    with tempfile.TemporaryDirectory(prefix="affext-psa-rw-") as tmp:
        cfg = MakeRwConfig(
            backbone=BACKBONE,
            alpha=float(args.alpha),
            beta=float(args.beta),
            iterations=2**args.logt,
            radius=5,
            region="psa",
            write_crf=False,
            num_workers=_workers(args.num_workers),
            device=args.device,
        )
        make_rw(args.voc12_root, ids, args.cam_dir, args.weights, tmp, cfg, progress=progress)
        _export_pngs(Path(tmp) / "rw", ids, args.out_rw)


def _training_fields(args) -> dict:
    return {
        "backbone": BACKBONE,
        "epochs": args.max_epoches,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.wt_dec,
        "crop_size": args.crop_size,
        "num_workers": _workers(args.num_workers),
        "device": args.device,
    }


def work_dir(session_name: str) -> Path:
    """Where a training session keeps its per-epoch checkpoints (resumable): NAME.affext/."""
    return Path(f"{session_name}.affext")


def _session(args, network: str) -> tuple[list[str], Path, str]:
    """A psa training script's start: its --network and --weights checked, the training ids,
    its work folder (made) and the backbone weights file for the stage."""
    check_network(args.network, network)
    check_weights_name(args.weights)
    ids = read_id_list(args.train_list)
    work = work_dir(args.session_name)
    work.mkdir(parents=True, exist_ok=True)
    return ids, work, backbone_weights(args.weights, work)


def train_cls(args) -> Path:
    """psa train_cls.py: the classifier, saved as <session_name>.pth in psa's names."""
    ids, work, weights = _session(args, "cls")
    cfg = TrainCamConfig(weights=weights, **_training_fields(args), **_label_fields())
    run_train_cam(args.voc12_root, ids, work, cfg, progress=not getattr(args, "quiet", False))
    out = Path(f"{args.session_name}.pth")
    save_psa_state_dict(load_cam_net(work, BACKBONE), out)
    print(f"wrote {out} (psa's network.resnet38_cls state dict)")
    return out


def train_aff(args) -> Path:
    """psa train_aff.py: AffinityNet from the la / ha dicts, saved as <session_name>.pth."""
    ids, work, weights = _session(args, "aff")
    labels = work / "aff_labels"
    labels.mkdir(exist_ok=True)
    for name, target in (("la", args.la_crf_dir), ("ha", args.ha_crf_dir)):
        if not os.path.isdir(target):
            raise FileNotFoundError(f"--{name}_crf_dir {target} is not a folder")
        link = labels / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.abspath(target), target_is_directory=True)
    cfg = TrainAffConfig(weights=weights, radius=5, region="psa", **_training_fields(args))
    progress = not getattr(args, "quiet", False)
    run_train_aff(args.voc12_root, ids, labels, work, cfg, progress=progress)
    out = Path(f"{args.session_name}.pth")
    save_psa_state_dict(load_aff_net(work, BACKBONE), out)
    print(f"wrote {out} (psa's network.resnet38_aff state dict)")
    return out


def convert_weights(args) -> Path:
    """psa's MXNet ImageNet weights -> a torch state dict (psa's / affext's resnet38 names)."""
    if not str(args.params).endswith(".params"):
        raise ValueError(f"{args.params}: expected an MXNet .params file")
    state = convert_params(args.params, args.out)
    print(f"wrote {args.out}: {len(state)} ResNet-38 tensors in psa's names")
    return Path(args.out)

"""Files from others cannot run code when affext reads them (affext/safe_load.py).

Every payload below makes a folder (os.mkdir of `marker`) when it is unpickled the way psa
and IRN read their files (np.load(allow_pickle=True), torch.load(weights_only=False)); the
controls check that it does, the refusal tests that affext's readers refuse the file and the
folder never appears. The legitimate formats must read back exactly as np.load gives them.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import small_voc

from affext.cli import main
from affext.data.voc import load_cls_labels
from affext.files import load_score_dict, save_score_dict
from affext.irn.files import load_cam_file, save_cam_file
from affext.irn.network import IRNEdgeNet, load_irn_weights
from affext.models import CAMNet, build_backbone, read_checkpoint, save_checkpoint
from affext.models.affinity_net import AffinityNet
from affext.models.checkpoint import psa_state_dict
from affext.psa.cli import main as psa_main
from affext.psa.scripts import backbone_weights
from affext.safe_load import UnsafeFileError, load_npy, load_npy_dict
from affext.stages.train_aff import load_aff_net
from affext.stages.train_cam import load_cam_net


class Payload:
    """Unpickles as os.mkdir(marker): code that a file runs when read with plain pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


class Foreign:
    """A class of someone else's module: importing it could run that module's code."""


class StorageBytes:
    """Pickles as torch.storage._load_from_bytes(data), the call a pickled tensor makes."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self):
        return (torch.storage._load_from_bytes, (self.data,))


class LongView:
    """Pickles as a 40-element tensor over a 4-element storage (a read past its end)."""

    def __reduce__(self):
        storage = torch.arange(4.0).untyped_storage()
        typed = torch.TypedStorage(wrap_storage=storage, dtype=torch.float32, _internal=True)
        return (torch._utils._rebuild_tensor_v2, (typed, 0, (40,), (1,), False, OrderedDict()))


def write_object_npy(path: Path, stream: bytes) -> Path:
    """A .npy of a 0-d object array whose pickle stream is `stream` (np.save's layout)."""
    with open(path, "wb") as f:
        header = {"descr": "|O", "fortran_order": False, "shape": ()}
        np.lib.format.write_array_header_1_0(f, header)
        f.write(stream)
    return path


def legacy_torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def _payload_files(tmp: Path, marker: Path) -> dict[str, Path]:
    """Each way of hiding code in a psa / IRN .npy file."""
    out = {}

    def save(name, obj):
        out[name] = tmp / f"{name}.npy"
        np.save(out[name], obj, allow_pickle=True)

    save("top_level", Payload(marker))
    save("dict_value", {0: Payload(marker)})
    save("irn_key", {"keys": np.arange(2), "cam": Payload(marker)})
    save("object_array", np.array([Payload(marker)], dtype=object))
    save("foreign_class", {0: np.array([Foreign()], dtype=object)})
    save("nested_dict", {0: np.zeros((2, 2), np.float32), 1: {"x": Payload(marker)}})
    save("in_a_list", {0: [np.zeros(3), Payload(marker)]})
    save(
        "tensor_bytes",
        {"keys": np.arange(1), "cam": StorageBytes(legacy_torch_bytes(Payload(marker)))},
    )
    # A BUILD opcode writing an attribute of an allowed global (numpy.dtype), protocol 2.
    build = b"\x80\x02cnumpy\ndtype\nN}X\x08\x00\x00\x00__init__Ns\x86b."
    out["attribute_write"] = write_object_npy(tmp / "attribute_write.npy", build)
    return out


PAYLOADS = [
    "top_level",
    "dict_value",
    "irn_key",
    "object_array",
    "foreign_class",
    "nested_dict",
    "in_a_list",
    "tensor_bytes",
    "attribute_write",
]
READERS = {
    "load_npy": lambda p: load_npy(p, "test", tensors=True),
    "load_score_dict": load_score_dict,
    "load_cam_file": load_cam_file,
    "load_cls_labels": load_cls_labels,
}


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "payload_ran"
    yield path
    assert not path.exists(), "a payload ran"


def test_the_payloads_run_under_plain_np_load(tmp_path):
    """Control: np.load(allow_pickle=True), psa's and IRN's reader, runs them."""
    marker = tmp_path / "ran"
    files = _payload_files(tmp_path, marker)
    for name in ("top_level", "dict_value", "object_array", "nested_dict", "tensor_bytes"):
        np.load(files[name], allow_pickle=True)
        assert marker.is_dir(), name
        marker.rmdir()
    held = np.load(files["foreign_class"], allow_pickle=True).item()[0][0]
    assert type(held) is Foreign


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("name", PAYLOADS)
def test_npy_payloads_are_refused(tmp_path, marker, reader, name):
    path = _payload_files(tmp_path, marker)[name]
    with pytest.raises(UnsafeFileError, match=f"{path.name}.*holds .*refused, and nothing"):
        READERS[reader](path)


def test_refusals_name_what_the_file_held(tmp_path, marker):
    files = _payload_files(tmp_path, marker)
    with pytest.raises(UnsafeFileError, match="reference to posix.mkdir"):
        load_npy(files["dict_value"])
    with pytest.raises(UnsafeFileError, match="test_safe_load.Foreign"):
        load_npy(files["foreign_class"])
    with pytest.raises(UnsafeFileError, match=r"a \(1,\) array of dtype object"):
        load_npy(files["object_array"])
    with pytest.raises(UnsafeFileError, match="builtins.list under key 0"):
        np.save(tmp_path / "list.npy", {0: [np.zeros(3)]})
        load_npy(tmp_path / "list.npy")
    with pytest.raises(UnsafeFileError, match="weights-only reader refuses.*posix.mkdir"):
        load_npy(files["tensor_bytes"], tensors=True)
    with pytest.raises(UnsafeFileError, match="write of attribute '__init__' on numpy.dtype"):
        load_npy(files["attribute_write"])
    np.save(tmp_path / "obj.npy", {0: np.array([1, 2], dtype=object)})
    with pytest.raises(UnsafeFileError, match=r"\(2,\) object array under key 0"):
        load_npy(tmp_path / "obj.npy")
    np.save(tmp_path / "float_key.npy", {1.5: np.zeros(2)})
    with pytest.raises(UnsafeFileError, match="dict key a builtins.float"):
        load_npy(tmp_path / "float_key.npy")
    np.save(tmp_path / "view.npy", {"keys": np.arange(1), "cam": LongView()}, allow_pickle=True)
    with pytest.raises(UnsafeFileError, match=r"size \(40,\).*past the end of its 4-element"):
        load_npy(tmp_path / "view.npy", tensors=True)
    # psa's readers take numpy arrays only: an IRN record (torch tensors) is refused there
    save_cam_file(tmp_path / "irn.npy", [0], np.zeros((1, 2, 2)))
    with pytest.raises(UnsafeFileError, match="torch tensors"):
        load_score_dict(tmp_path / "irn.npy")


def test_broken_and_plain_files(tmp_path):
    (tmp_path / "junk.npy").write_bytes(b"not a numpy file")
    with pytest.raises(ValueError, match="cannot read CAM file .*junk.npy"):
        load_score_dict(tmp_path / "junk.npy")
    np.save(tmp_path / "cut.npy", {0: np.zeros((4, 4), np.float32)})
    data = (tmp_path / "cut.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) - 40])
    with pytest.raises(ValueError, match="cannot read CAM file .*cut.npy"):
        load_score_dict(tmp_path / "cut.npy")
    with pytest.raises(FileNotFoundError, match="missing CAM file"):
        load_score_dict(tmp_path / "none.npy")
    # a plain numeric array is read with allow_pickle=False, as it is; a dict reader refuses it
    plain = np.arange(12, dtype=np.int16).reshape(3, 4)
    np.save(tmp_path / "plain.npy", plain)
    got = load_npy(tmp_path / "plain.npy")
    assert got.dtype == np.int16 and np.array_equal(got, plain)
    with pytest.raises(ValueError, match=r"plain.npy' holds a \(3, 4\) int16 array, not"):
        load_npy_dict(tmp_path / "plain.npy", "CAM")


# -- the legitimate formats -----------------------------------------------------------------
def assert_identical(got, want) -> None:
    """Same keys in the same order and of the same types, values of the same type, dtype,
    shape, strides and bytes."""
    assert type(got) is dict and list(got) == list(want)
    assert [type(k) for k in got] == [type(k) for k in want]
    for k in want:
        a, b = got[k], want[k]
        assert type(a) is type(b), k
        if isinstance(b, torch.Tensor):
            assert (a.dtype, a.shape, a.stride()) == (b.dtype, b.shape, b.stride()), k
            assert a.numpy().tobytes() == b.numpy().tobytes(), k
        else:
            assert (a.dtype, a.shape, a.strides) == (b.dtype, b.shape, b.strides), k
            assert a.tobytes() == b.tobytes(), k


def _legit_files(tmp: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    out = {}

    def save(name, obj):
        out[name] = tmp / f"{name}.npy"
        np.save(out[name], obj)  # as psa and IRN write them

    maps = rng.random((3, 6, 7), dtype=np.float32)
    maps[0, 0, 0] = np.nan  # bits, not values, are compared
    save("psa_cam", {0: maps[0], 11: maps[1], 14: maps[2]})
    save("psa_la", {0: maps[0], 12: maps[1], 15: maps[2].astype(np.float64)})
    save("numpy_int_keys", {np.int64(3): maps[0], np.uint8(7): maps[1].T})
    save(
        "irn_cam",
        {
            "keys": torch.tensor([4, 14]),
            "cam": torch.from_numpy(maps[:2, :3, :4].copy()),
            "high_res": maps[:2],
        },
    )
    save(
        "cls_labels",
        {"2007_000032": np.eye(20, dtype=np.float32)[0], "2007_000039": np.ones(20, np.float32)},
    )
    save("irn_cls_labels", {2007000032: np.eye(20, dtype=np.float32)[3]})
    out["affext_cam"] = tmp / "affext_cam.npy"
    save_score_dict(out["affext_cam"], {2: maps[0], 5: maps[1]})
    out["affext_irn"] = tmp / "affext_irn.npy"
    save_cam_file(out["affext_irn"], [0, 19], maps[:2, :2], maps[:2])
    # numpy 1.x's module name (psa's era: np.save pickled with protocol 3), and protocol 2
    for protocol in (2, 3):
        table = np.asarray({1: maps[0], np.int32(2): np.arange(3)}, dtype=object)
        stream = pickle.dumps(table, protocol=protocol)
        stream = stream.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        assert b"numpy.core.multiarray" in stream
        out[f"numpy1_p{protocol}"] = write_object_npy(tmp / f"numpy1_p{protocol}.npy", stream)
    return out


def np_load_item(path: Path):
    """How psa and IRN read their files (numpy 2 warns on numpy 1.x's module names)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return np.load(path, allow_pickle=True).item()


def test_legit_formats_read_bit_identically(tmp_path):
    for name, path in _legit_files(tmp_path).items():
        want = np_load_item(path)
        got = load_npy(path, name, tensors=True)
        assert_identical(got, want)
        if "irn" not in name or "cls" in name:
            assert_identical(load_npy(path, name), want)


def test_readers_give_the_files_contents(tmp_path):
    files = _legit_files(tmp_path)
    for name in ("psa_cam", "psa_la", "affext_cam", "numpy1_p2", "numpy1_p3"):
        assert_identical(load_score_dict(files[name]), np_load_item(files[name]))
    for name in ("irn_cam", "affext_irn"):
        record = np_load_item(files[name])
        got = load_cam_file(files[name])
        assert np.array_equal(got.keys, np.asarray(record["keys"]))
        assert got.cam.numpy().tobytes() == np.asarray(record["cam"]).tobytes()
        assert got.high_res.tobytes() == record["high_res"].tobytes()
    labels = load_cls_labels(files["cls_labels"])
    assert list(labels) == ["2007_000032", "2007_000039"]
    assert labels["2007_000032"].tobytes() == np.eye(20, dtype=np.float32)[0].tobytes()
    assert list(load_cls_labels(files["irn_cls_labels"])) == ["2007000032"]


# -- torch files: --weights, --cam-net, --aff-net, --seg-net, psa's and IRN's weights --------
@pytest.fixture
def payload_pth(tmp_path, marker):
    """A state dict with a payload beside its tensors; plain torch.load runs it (control)."""
    path = tmp_path / "res38_cls.pth"
    torch.save({"fc8.weight": torch.zeros(20, 8, 1, 1), "x": Payload(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.is_dir()
    marker.rmdir()
    return path


PTH_READERS = {
    "--weights": lambda p: build_backbone("tiny", weights=p),
    "--cam-net": lambda p: load_cam_net(p, "tiny"),
    "--aff-net": lambda p: load_aff_net(p, "tiny"),
    "checkpoint": read_checkpoint,
    "psa --weights (training)": lambda p: backbone_weights(str(p), p.parent),
    "irn --irn_weights_name": lambda p: load_irn_weights(IRNEdgeNet(64), p),
}


@pytest.mark.parametrize("reader", sorted(PTH_READERS))
def test_pth_payloads_are_refused(payload_pth, reader):
    with pytest.raises(UnsafeFileError, match="res38_cls.pth holds more than tensors.*posix.mkdir"):
        PTH_READERS[reader](payload_pth)


def _state_bytes(state) -> dict:
    return {k: (v.dtype, tuple(v.shape), v.numpy().tobytes()) for k, v in state.items()}


def test_pth_files_load_bit_identically(tmp_path):
    torch.manual_seed(0)
    cam = CAMNet(build_backbone("tiny"), num_classes=20)
    aff = AffinityNet(build_backbone("tiny"))
    save_checkpoint(cam, tmp_path / "cam_net.pt", epoch=3)
    save_checkpoint(aff, tmp_path / "aff_net.pt")
    torch.save(psa_state_dict(cam), tmp_path / "res38_cls.pth")  # psa's layout
    torch.save(psa_state_dict(aff), tmp_path / "res38_aff.pth")
    torch.save(cam.backbone.state_dict(), tmp_path / "imagenet.pth")
    want_cam, want_aff = _state_bytes(cam.state_dict()), _state_bytes(aff.state_dict())
    assert _state_bytes(load_cam_net(tmp_path / "cam_net.pt", "tiny").state_dict()) == want_cam
    assert _state_bytes(load_cam_net(tmp_path / "res38_cls.pth", "tiny").state_dict()) == want_cam
    assert _state_bytes(load_aff_net(tmp_path / "aff_net.pt", "tiny").state_dict()) == want_aff
    assert _state_bytes(load_aff_net(tmp_path / "res38_aff.pth", "tiny").state_dict()) == want_aff
    got = build_backbone("tiny", weights=tmp_path / "imagenet.pth").state_dict()
    assert _state_bytes(got) == _state_bytes(cam.backbone.state_dict())
    assert read_checkpoint(tmp_path / "cam_net.pt")["meta"] == {"epoch": 3}
    irn = IRNEdgeNet(64)
    torch.save({"extra.weight": torch.ones(2), **irn.state_dict()}, tmp_path / "res50_irn.pth")
    got = load_irn_weights(IRNEdgeNet(64), tmp_path / "res50_irn.pth").state_dict()
    assert _state_bytes(got) == _state_bytes(irn.state_dict())
    # psa's training --weights: a state dict with a head keeps its ResNet-38 part, saved anew
    conv = torch.randn(64, 3, 3, 3)
    torch.save({"conv1a.weight": conv, "fc8.weight": torch.ones(1)}, tmp_path / "psa.pth")
    kept = torch.load(backbone_weights(str(tmp_path / "psa.pth"), tmp_path), weights_only=True)
    assert (
        list(kept) == ["conv1a.weight"]
        and kept["conv1a.weight"].numpy().tobytes() == conv.numpy().tobytes()
    )


# -- the commands -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = small_voc(tmp_path_factory.mktemp("voc"), 2, 0, size=(40, 48))
    ids = (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    return root, ids


def _payload_cam_dir(tmp: Path, ids, marker: Path, irn: bool = False) -> Path:
    cam_dir = tmp / "cam"
    cam_dir.mkdir(parents=True)
    for i in ids:
        value = Payload(marker)
        record = {"keys": torch.tensor([0]), "cam": value} if irn else {0: value}
        np.save(cam_dir / f"{i}.npy", record, allow_pickle=True)
    return cam_dir


def test_commands_refuse_payload_files(voc, tmp_path, marker, payload_pth, capsys):
    root, ids = voc
    lst = root / "ImageSets" / "Segmentation" / "train.txt"
    common = ["--voc-root", str(root), "--quiet", "--workers", "0"]
    cam_dir = _payload_cam_dir(tmp_path, ids, marker)
    np.save(tmp_path / "cls_labels.npy", {ids[0]: Payload(marker)}, allow_pickle=True)
    cam_net = tmp_path / "cam_net.pt"
    save_checkpoint(CAMNet(build_backbone("tiny"), num_classes=20), cam_net)
    runs = {
        "make-cam --cam-net": [
            "make-cam",
            *common,
            "--backbone",
            "tiny",
            "--list",
            str(lst),
            "--cam-net",
            str(payload_pth),
            "--out",
            str(tmp_path / "o1"),
        ],
        "make-cam --cls-labels": [
            "make-cam",
            *common,
            "--backbone",
            "tiny",
            "--list",
            str(lst),
            "--label-source",
            "npy",
            "--cls-labels",
            str(tmp_path / "cls_labels.npy"),
            "--cam-net",
            str(cam_net),
            "--out",
            str(tmp_path / "o2"),
        ],
        "train-cam --weights": [
            "train-cam",
            *common,
            "--backbone",
            "tiny",
            "--train-list",
            str(lst),
            "--weights",
            str(payload_pth),
            "--out",
            str(tmp_path / "o3"),
        ],
        "make-aff-labels --cam-dir": [
            "make-aff-labels",
            *common,
            "--list",
            str(lst),
            "--cam-dir",
            str(cam_dir),
            "--out",
            str(tmp_path / "o4"),
        ],
        "make-rw --aff-net": [
            "make-rw",
            *common,
            "--backbone",
            "tiny",
            "--list",
            str(lst),
            "--cam-dir",
            str(cam_dir),
            "--aff-net",
            str(payload_pth),
            "--out",
            str(tmp_path / "o5"),
        ],
        "make-seg --seg-net": [
            "make-seg",
            *common,
            "--backbone",
            "tiny",
            "--list",
            str(lst),
            "--seg-net",
            str(payload_pth),
            "--out",
            str(tmp_path / "o6"),
        ],
    }
    for name, argv in runs.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert "refused, and nothing in it was run" in err, (name, err)
    psa = [
        "--infer_list",
        str(lst),
        "--voc12_root",
        str(root),
        "--weights",
        str(payload_pth),
        "--num_workers",
        "0",
    ]
    assert psa_main(["infer_cls", *psa, "--out_cam", str(tmp_path / "o7"), "--quiet"]) == 2
    assert "holds more than tensors" in capsys.readouterr().err
    assert (
        psa_main(
            [
                "infer_aff",
                *psa,
                "--cam_dir",
                str(cam_dir),
                "--out_rw",
                str(tmp_path / "o8"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "holds more than tensors" in capsys.readouterr().err
    irn_cams = _payload_cam_dir(tmp_path / "irn", ids, marker, irn=True)
    torch.save(IRNEdgeNet(64).state_dict(), tmp_path / "res50_irn.pth")
    irn = [
        "irn",
        "make-sem-seg-labels",
        "--voc12_root",
        str(root),
        "--infer_list",
        str(lst),
        "--sem_seg_out_dir",
        str(tmp_path / "o9"),
        "--num_workers",
        "0",
        "--quiet",
        "--irn_crop_size",
        "64",
    ]
    assert (
        main(
            [
                *irn,
                "--cam_out_dir",
                str(irn_cams),
                "--irn_weights_name",
                str(tmp_path / "res50_irn.pth"),
            ]
        )
        == 2
    )
    assert "refused, and nothing in it was run" in capsys.readouterr().err
    assert main([*irn, "--cam_out_dir", str(irn_cams), "--irn_weights_name", str(payload_pth)]) == 2
    assert "holds more than tensors" in capsys.readouterr().err

"""affext.irn: IRN's path affinities, its walk and its semantic-label step, against references
written here from IRN's definitions (brute-force paths over pixel pairs, the dense N x N
transition matrix squared), and a stand-in IRN network with IRN's parameter names."""

import argparse
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import requires_cuda
from PIL import Image
from torch import nn

from affext.irn import path_affinity, propagate_to_edge
from affext.irn.cli import add_parser
from affext.irn.files import load_cam_file, save_cam_file, save_label
from affext.irn.network import IRNEdgeNet, load_irn_weights
from affext.irn.stage import semantic_label
from affext.models.backbones.resnet50 import ResNet50
from affext.neighborhood import neighborhood_offsets
from affext.reference.random_walk import dense_transition


# --- references -----------------------------------------------------------------------------
def segment_path(p, q):
    """Lattice points of the box spanned by p and q within distance < 1 of the segment p-q."""
    (py, px), (qy, qx) = p, q
    vy, vx = qy - py, qx - px
    length_sq = vy * vy + vx * vx
    points = []
    for y in range(min(py, qy), max(py, qy) + 1):
        for x in range(min(px, qx), max(px, qx) + 1):
            t = min(1.0, max(0.0, ((y - py) * vy + (x - px) * vx) / length_sq))
            dist = math.hypot(y - (py + t * vy), x - (px + t * vx))
            if dist < 1:
                points.append((y, x))
    return points


def brute_force_path_affinity(edge, radius=5):
    """(B, K, H, W) by a loop over every pixel pair (p, p + o_k)."""
    b_count, h, w = edge.shape
    offsets = neighborhood_offsets(radius)
    out = torch.zeros(b_count, len(offsets), h, w, dtype=edge.dtype)
    for b in range(b_count):
        for k, (dy, dx) in enumerate(offsets):
            for y in range(h):
                for x in range(w):
                    qy, qx = y + dy, x + dx
                    if not (0 <= qy < h and 0 <= qx < w):
                        continue  # the partner is off the map: no pair, affinity 0
                    path = segment_path((y, x), (qy, qx))
                    out[b, k, y, x] = 1 - max(float(edge[b, py, px]) for py, px in path)
    return out


def dense_propagate(x, edge, radius=5, beta=10, exp_times=8):
    """IRN's walk in float64 with the dense matrix: (C, H, W), (H, W) -> (C, 1, H, W)."""
    x, edge = x.double(), edge.double()
    aff = brute_force_path_affinity(edge[None], radius)[0]
    trans = dense_transition(aff, radius, "full", beta)
    for _ in range(exp_times):
        trans = trans @ trans
    c, h, w = x.shape
    return ((x * (1 - edge)).reshape(c, -1) @ trans).reshape(c, 1, h, w)


def boundary_map(size, seed, dtype=torch.float64):
    """A boundary map with a few lines of high values and noise elsewhere, in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    edge = 0.2 * torch.rand(h, w, generator=gen, dtype=dtype)
    edge[h // 2, :] = 0.9
    edge[:, w // 3] = torch.maximum(edge[:, w // 3], torch.tensor(0.7, dtype=dtype))
    edge[0, 0], edge[-1, -1] = 0.0, 1.0
    return edge


# --- path affinities ------------------------------------------------------------------------
@pytest.mark.parametrize("radius, size", [(5, (9, 13)), (5, (1, 1)), (5, (3, 2)), (3, (6, 4))])
def test_path_affinity_matches_brute_force(radius, size):
    edge = torch.rand(2, *size, dtype=torch.float64)
    edge[0, 0, 0] = 1.0
    got = path_affinity(edge, radius)
    assert got.shape == (2, len(neighborhood_offsets(radius)), *size)
    torch.testing.assert_close(got, brute_force_path_affinity(edge, radius), rtol=0, atol=0)


def test_path_affinity_radius_5_paths():
    # IRN's definition on two offsets, by hand: (0, 4) runs straight; (1, -4) spans a 2 x 5
    # box whose ten points all lie within distance 4 / sqrt(17) < 1 of the segment.
    edge = torch.zeros(1, 3, 12, dtype=torch.float64)
    k_right = neighborhood_offsets(5).index((0, 4))
    k_diag = neighborhood_offsets(5).index((1, -4))
    edge[0, 0, 6] = 0.5
    aff = path_affinity(edge)
    assert aff[0, k_right, 0, 2] == 0.5 and aff[0, k_right, 0, 7] == 1.0
    edge.zero_()
    edge[0, 1, 8] = 0.25  # at (y + 1, x) of the pair from (0, 8) to (1, 4)
    assert path_affinity(edge)[0, k_diag, 0, 8] == 0.75


def test_path_affinity_gradcheck():
    edge = (0.1 + 0.8 * torch.rand(1, 4, 6, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda e: path_affinity(e, 3), (edge,))


@pytest.mark.parametrize(
    "edge, message",
    [
        (torch.full((1, 5, 9), 1.5), r"\[0, 1\]"),
        (torch.full((1, 5, 9), -0.1), r"\[0, 1\]"),
        (torch.full((1, 5, 9), float("nan")), "NaN"),
        (torch.rand(5, 9), r"\(B, H, W\)"),
    ],
)
def test_path_affinity_errors(edge, message):
    with pytest.raises(ValueError, match=message):
        path_affinity(edge)


# --- the walk -------------------------------------------------------------------------------
# Region "full" takes any map size, also those below psa's minimum for radius 5 (H >= 5,
# W >= 9).
WALK_SIZES = [(7, 11), (10, 9), (1, 1), (2, 3), (4, 8), (3, 20), (20, 3)]


@pytest.mark.parametrize("size", WALK_SIZES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("beta", [1, 10])
@pytest.mark.parametrize("exp_times", [0, 1, 3, 8])
def test_propagate_to_edge_matches_dense(size, channels, beta, exp_times):
    edge = boundary_map(size, seed=1)
    x = torch.rand(channels, *size, dtype=torch.float64)
    got = propagate_to_edge(x, edge, radius=5, beta=beta, exp_times=exp_times)
    ref = dense_propagate(x, edge, 5, beta, exp_times)
    assert got.shape == (channels, 1, *size) and got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12 * ref.abs().max().item())


def test_propagate_to_edge_float32_and_edge_with_channel():
    edge = boundary_map((8, 12), seed=2, dtype=torch.float32)
    x = torch.rand(2, 8, 12)
    ref = dense_propagate(x, edge)  # float64 from the same float32 inputs
    got = propagate_to_edge(x, edge[None])  # IRN passes (1, H, W) edges
    assert got.dtype == torch.float32
    # 256 float32 steps: ~1e-6 of the largest value lost a step (IRN's 8 float32 squarings: 7e-5)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-3 * ref.abs().max().item())


@pytest.mark.parametrize(
    "x, edge, kwargs, error, message",
    [
        (torch.rand(2, 6, 9), torch.rand(6, 10), {}, ValueError, "map size"),
        (torch.rand(6, 9), torch.rand(6, 9), {}, ValueError, r"\(C, H, W\)"),
        (torch.rand(2, 6, 9), torch.rand(6, 9) + 1, {}, ValueError, r"\[0, 1\]"),
        (torch.rand(2, 6, 9), torch.rand(6, 9), {"exp_times": -1}, ValueError, ">= 0"),
        (torch.rand(2, 6, 9), torch.rand(6, 9), {"exp_times": 2.0}, TypeError, "int"),
    ],
)
def test_propagate_to_edge_errors(x, edge, kwargs, error, message):
    with pytest.raises(error, match=message):
        propagate_to_edge(x, edge, **kwargs)


@requires_cuda
@pytest.mark.cuda
def test_propagate_to_edge_cuda_matches_cpu():
    edge = boundary_map((24, 31), seed=3, dtype=torch.float32)
    x = torch.rand(3, 24, 31)
    cpu = propagate_to_edge(x, edge)
    gpu = propagate_to_edge(x.cuda(), edge.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(path_affinity(edge[None].cuda()).cpu(), path_affinity(edge[None]))


def test_semantic_label_stops_at_a_boundary():
    # a wall of boundary across the map: the class on its left does not leak to the right
    edge = torch.zeros(8, 12)
    edge[:, 6] = 1.0
    cam = torch.zeros(2, 8, 12)
    cam[0, 3, 2] = 1.0  # class 4 (key 3), left of the wall
    cam[1, 4, 9] = 0.5  # class 12 (key 11), right of it
    label = semantic_label(cam, np.array([3, 11]), edge, (30, 45))
    assert label.shape == (30, 45) and label.dtype == np.uint8
    assert set(np.unique(label[:, :20])) == {4} and set(np.unique(label[:, 28:])) == {12}
    assert np.all(semantic_label(cam[:0], np.array([], np.int64), edge, (30, 45)) == 0)


# --- files ----------------------------------------------------------------------------------
def test_cam_file_round_trip_and_irn_written_files(tmp_path):
    keys, cam = np.array([4, 11]), np.random.rand(2, 5, 7).astype(np.float32)
    high = np.random.rand(2, 18, 25).astype(np.float32)
    save_cam_file(tmp_path / "a.npy", keys, cam, high)
    got = load_cam_file(tmp_path / "a.npy")
    np.testing.assert_array_equal(got.keys, keys)
    np.testing.assert_array_equal(got.cam.numpy(), cam)
    np.testing.assert_array_equal(got.high_res, high)
    # the types IRN's make_cam.py writes: keys from torch.nonzero, cam a CPU tensor
    raw = np.load(tmp_path / "a.npy", allow_pickle=True).item()
    assert isinstance(raw["keys"], torch.Tensor) and raw["keys"].dtype == torch.int64
    assert isinstance(raw["cam"], torch.Tensor) and isinstance(raw["high_res"], np.ndarray)
    label = torch.zeros(20)
    label[[3, 19]] = 1
    irn = {"keys": torch.nonzero(label)[:, 0], "cam": torch.from_numpy(cam), "high_res": high}
    np.save(tmp_path / "b.npy", irn)
    got = load_cam_file(tmp_path / "b.npy")
    np.testing.assert_array_equal(got.keys, [3, 19])
    np.testing.assert_array_equal(got.cam.numpy(), cam)


def test_cam_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.npy"):
        load_cam_file(tmp_path / "nothere.npy")
    np.save(tmp_path / "psa.npy", {0: np.zeros((4, 4), np.float32)})
    with pytest.raises(ValueError, match="psa.npy.*keys"):
        load_cam_file(tmp_path / "psa.npy")
    np.save(tmp_path / "bad.npy", {"keys": np.array([1, 2]), "cam": np.zeros((3, 4, 4))})
    with pytest.raises(ValueError, match=r"bad.npy.*\(3, 4, 4\)"):
        load_cam_file(tmp_path / "bad.npy")
    with pytest.raises(ValueError, match="len\\(keys\\)"):
        save_cam_file(tmp_path / "c.npy", [1], np.zeros((2, 3, 3)))
    assert not list(tmp_path.glob("*.tmp"))


def test_label_png_is_irns_grey_png(tmp_path):
    label = np.random.randint(0, 21, (13, 17)).astype(np.uint8)
    save_label(tmp_path / "x.png", label)
    with Image.open(tmp_path / "x.png") as image:
        assert image.mode == "L"
        np.testing.assert_array_equal(np.asarray(image), label)


# --- a stand-in of IRN's network, with IRN's names ------------------------------------------
def irn_resnet50():
    """IRN's backbone made another way: affext's dilated ResNet-50 set back to strides
    (2, 2, 2, 1) without dilation."""
    net = ResNet50()
    net.layer3[0].conv2.stride = (2, 2)
    net.layer3[0].downsample[0].stride = (2, 2)
    for block in list(net.layer3) + list(net.layer4):
        block.conv2.dilation, block.conv2.padding = (1, 1), (1, 1)
    return net


def _branch(cin, cout, groups, up=None, relu=True):
    layers = [nn.Conv2d(cin, cout, 1, bias=False), nn.GroupNorm(groups, cout)]
    if up:
        layers.append(nn.Upsample(scale_factor=up, mode="bilinear", align_corners=False))
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MeanShift(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(2))


class IrnStandIn(nn.Module):
    """IRN's AffinityDisplacementLoss as its state dict sees it: the backbone under resnet50
    and again under stage1..5 and backbone, both branches, the training buffers."""

    def __init__(self):
        super().__init__()
        self.resnet50 = r = irn_resnet50()
        self.stage1 = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool)
        self.stage2, self.stage3 = nn.Sequential(r.layer1), nn.Sequential(r.layer2)
        self.stage4, self.stage5 = nn.Sequential(r.layer3), nn.Sequential(r.layer4)
        self.mean_shift = MeanShift()
        self.fc_edge1 = _branch(64, 32, 4)
        self.fc_edge2 = _branch(256, 32, 4)
        self.fc_edge3 = _branch(512, 32, 4, up=2)
        self.fc_edge4 = _branch(1024, 32, 4, up=4)
        self.fc_edge5 = _branch(2048, 32, 4, up=4)
        self.fc_edge6 = nn.Conv2d(160, 1, 1, bias=True)
        self.fc_dp1 = _branch(64, 64, 8)
        self.fc_dp2 = _branch(256, 128, 16)
        self.fc_dp3 = _branch(512, 256, 16)
        self.fc_dp4 = _branch(1024, 256, 16, up=2)
        self.fc_dp5 = _branch(2048, 256, 16, up=2)
        self.fc_dp6 = _branch(768, 256, 16, up=2)
        self.fc_dp7 = nn.Sequential(
            *_branch(448, 256, 16), nn.Conv2d(256, 2, 1, bias=False), self.mean_shift
        )
        stages = [self.stage1, self.stage2, self.stage3, self.stage4, self.stage5]
        self.backbone = nn.ModuleList(stages)
        self.edge_layers = nn.ModuleList([getattr(self, f"fc_edge{i}") for i in range(1, 7)])
        self.dp_layers = nn.ModuleList([getattr(self, f"fc_dp{i}") for i in range(1, 8)])
        self.register_buffer("path_indices0", torch.arange(12).view(1, 3, 4))
        self.register_buffer("disp_target", torch.zeros(1, 2, 34, 1))
        gen = torch.Generator().manual_seed(5)
        with torch.no_grad():  # normalisation layers away from their identity initialisation
            for m in self.modules():
                if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                    m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen))
                    m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
                    m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
            self.fc_edge6.bias.fill_(-1.0)
        self.eval()

    def edge_logits(self, x):
        x1 = self.stage1(x)
        x2 = self.stage2(x1)
        x3 = self.stage3(x2)
        x4 = self.stage4(x3)
        x5 = self.stage5(x4)
        e1, e2 = self.fc_edge1(x1), self.fc_edge2(x2)
        h, w = e2.shape[-2:]
        e3 = self.fc_edge3(x3)[..., :h, :w]
        e4 = self.fc_edge4(x4)[..., :h, :w]
        e5 = self.fc_edge5(x5)[..., :h, :w]
        return self.fc_edge6(torch.cat([e1, e2, e3, e4, e5], 1))

    def boundary(self, image, crop):
        """IRN's EdgeDisplacement on one (3, H, W) image: (h, w) at stride 4."""
        h, w = (image.shape[1] + 3) // 4, (image.shape[2] + 3) // 4
        pair = torch.stack([image, torch.flip(image, [2])])
        pair = F.pad(pair, [0, crop - image.shape[2], 0, crop - image.shape[1]])
        out = self.edge_logits(pair)[..., :h, :w]
        return torch.sigmoid(out[0, 0] / 2 + torch.flip(out[1, 0], [1]) / 2)


@pytest.fixture(scope="module")
def irn_weights(tmp_path_factory):
    torch.manual_seed(0)
    stand_in = IrnStandIn()
    path = tmp_path_factory.mktemp("irn") / "res50_irn.pth"
    torch.save(stand_in.state_dict(), path)
    return stand_in, path


def test_irn_weights_load_and_boundary_matches(irn_weights):
    stand_in, path = irn_weights
    state = torch.load(path, weights_only=True)
    assert "stage1.0.weight" in state and "fc_dp7.4.running_mean" in state
    model = load_irn_weights(IRNEdgeNet(crop_size=64), path).eval()
    image = torch.randn(3, 50, 37)
    with torch.no_grad():
        got, ref = model.boundary(image), stand_in.boundary(image, 64)
    assert got.shape == (13, 10)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert float(ref.std()) > 0  # the weights are not all alike


def test_irn_weights_errors(irn_weights, tmp_path):
    _, path = irn_weights
    state = torch.load(path, weights_only=True)
    del state["fc_edge6.bias"]
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(ValueError, match="cut.pth.*fc_edge6.bias"):
        load_irn_weights(IRNEdgeNet(64), tmp_path / "cut.pth")
    state = torch.load(path, weights_only=True)
    state["fc_edge6.weight"] = torch.zeros(1, 128, 1, 1)
    with pytest.raises(ValueError, match="shape mismatch.*fc_edge6.weight"):
        load_irn_weights(IRNEdgeNet(64), state)
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_irn_weights(IRNEdgeNet(64), tmp_path / "nothere.pth")


# --- the step -------------------------------------------------------------------------------
# stride-4 maps of 8x10 and 6x10: the walk of today needs H >= 5 and W >= 9 (radius 5)
IMAGES = {"2007_000001": (29, 38), "2008_000002": (22, 40)}
CROP = 40
EXP_TIMES = 2  # few enough steps that the labels keep some structure with random weights


def _dataset(tmp_path):
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    cam_dir = tmp_path / "cam"
    gen = np.random.default_rng(0)
    for n, (image_id, (h, w)) in enumerate(IMAGES.items()):
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[:] = gen.integers(0, 255, 3)
        rgb[h // 3 :, w // 2 :] = gen.integers(0, 255, 3)
        Image.fromarray(rgb).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        keys = [[6], [2, 14]][n]
        sh, sw = (h + 3) // 4, (w + 3) // 4
        ys, xs = np.mgrid[:sh, :sw]
        cam = np.stack(
            [np.exp(-((ys - sh * f) ** 2 + (xs - sw * f) ** 2) / 2.0) for f in (0.2, 0.8)]
        )[: len(keys)].astype(np.float32)
        save_cam_file(cam_dir / f"{image_id}.npy", keys, cam)
    (tmp_path / "train.txt").write_text("\n".join(IMAGES) + "\n")
    return root, cam_dir


def _run(tmp_path, root, cam_dir, weights, out, *extra):
    parser = argparse.ArgumentParser(prog="affext")
    add_parser(parser.add_subparsers(dest="command", required=True))
    argv = ["irn", "make-sem-seg-labels", "--voc12_root", str(root)]
    argv += ["--infer_list", str(tmp_path / "train.txt"), "--cam_out_dir", str(cam_dir)]
    argv += ["--irn_weights_name", str(weights), "--sem_seg_out_dir", str(out)]
    argv += ["--irn_crop_size", str(CROP), "--num_workers", "0", "--device", "cpu", "--quiet"]
    args = parser.parse_args(argv + list(extra))
    args.func(args)
    return args


def _expected_label(stand_in, root, cam_dir, image_id):
    """IRN's make_sem_seg_labels on one image, with the float64 dense walk."""
    from affext.data.transforms import normalize

    rgb = np.asarray(Image.open(root / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
    with torch.no_grad():
        edge = stand_in.boundary(torch.from_numpy(normalize(rgb)), CROP)
    record = np.load(cam_dir / f"{image_id}.npy", allow_pickle=True).item()
    rw = dense_propagate(record["cam"], edge, 5, 10, EXP_TIMES)
    up = F.interpolate(rw, scale_factor=4, mode="bilinear", align_corners=False)
    up = up[..., 0, : rgb.shape[0], : rgb.shape[1]]
    up = F.pad(up / up.max(), (0, 0, 0, 0, 1, 0), value=0.25)
    keys = np.pad(record["keys"].numpy() + 1, (1, 0))
    return keys[up.argmax(dim=0).numpy()]


def test_make_sem_seg_labels_matches_irn_and_resumes(tmp_path, irn_weights):
    stand_in, weights = irn_weights
    root, cam_dir = _dataset(tmp_path)
    out = tmp_path / "sem_seg"
    args = _run(tmp_path, root, cam_dir, weights, out, "--exp_times", str(EXP_TIMES))
    assert (args.beta, args.sem_seg_bg_thres) == (10, 0.25)  # IRN's defaults
    for image_id, size in IMAGES.items():
        with Image.open(out / f"{image_id}.png") as image:
            assert image.mode == "L"
            label = np.asarray(image)
        expected = _expected_label(stand_in, root, cam_dir, image_id)
        assert label.shape == size
        assert np.mean(label == expected) >= 0.999
        assert len(np.unique(label)) > 1
    # resumable: finished labels are kept, a missing one is made again
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    (out / "2008_000002.png").unlink()
    _run(tmp_path, root, cam_dir, weights, out, "--exp_times", str(EXP_TIMES))
    assert (out / "2007_000001.png").stat().st_mtime_ns == stamps["2007_000001.png"]
    assert (out / "2008_000002.png").is_file()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_make_sem_seg_labels_errors(tmp_path, irn_weights):
    _, weights = irn_weights
    root, cam_dir = _dataset(tmp_path)
    out = tmp_path / "sem_seg"
    (cam_dir / "2008_000002.npy").unlink()
    with pytest.raises(FileNotFoundError, match="2008_000002.npy"):
        _run(tmp_path, root, cam_dir, weights, out)
    save_cam_file(cam_dir / "2008_000002.npy", [1], np.zeros((1, 11, 12), np.float32))
    with pytest.raises(ValueError, match=r"2008_000002.npy.*\(11, 12\).*\(6, 10\)"):
        _run(tmp_path, root, cam_dir, weights, out)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth"):
        _run(tmp_path, root, cam_dir, tmp_path / "other.pth", out)

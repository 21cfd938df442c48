"""Draw the pictures of docs/: the neighbourhood, the layers and the pipeline's data path.

    python docs/make_figures.py            # writes docs/neighborhood.png, layers.png, pipeline.png

Needs matplotlib and torch, not the compiled kernels: the offsets and the from-region come
from affext/neighborhood.py, loaded as a plain file so that an unbuilt checkout can draw them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
DPI = 130


def _neighborhood_module():
    spec = importlib.util.spec_from_file_location(
        "affext_neighborhood", ROOT / "affext" / "neighborhood.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _box(ax, x, y, w, h, text, face, size=9, weight="normal"):
    ax.add_patch(
        FancyBboxPatch(
            (x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", fc=face, ec="#333333", lw=1
        )
    )
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, weight=weight)


def _arrow(ax, start, end, text=None, offset=(0.08, 0.0)):
    ax.add_patch(
        FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, lw=1.2, color="#333333")
    )
    if text:
        mx, my = (start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1]
        ax.text(mx, my, text, ha="left", va="center", fontsize=7.5, color="#444444")


def draw_neighborhood(path: Path, radius: int = 5) -> None:
    """Left: the half-disk offsets numbered in psa's order, their mirror and the centre.
    Right: psa's from-region on a small map."""
    nb = _neighborhood_module()
    offsets = nb.neighborhood_offsets(radius)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 5.8), gridspec_kw={"width_ratios": [1, 1.25]})
    rf = radius - 1
    for dy in range(-rf, rf + 1):
        for dx in range(-rf, rf + 1):
            ax.add_patch(Rectangle((dx - 0.5, dy - 0.5), 1, 1, fc="white", ec="#cccccc", lw=0.5))
    for k, (dy, dx) in enumerate(offsets):
        ax.add_patch(Rectangle((dx - 0.5, dy - 0.5), 1, 1, fc="#9ecae1", ec="#333333", lw=0.6))
        ax.text(dx, dy, str(k), ha="center", va="center", fontsize=8)
        ax.add_patch(Rectangle((-dx - 0.5, -dy - 0.5), 1, 1, fc="#eeeeee", ec="#999999", lw=0.6))
    ax.add_patch(Rectangle((-0.5, -0.5), 1, 1, fc="#fdae6b", ec="#333333", lw=0.8))
    ax.text(0, 0, "p", ha="center", va="center", fontsize=9, weight="bold")
    ax.set_xlim(-rf - 0.7, rf + 0.7)
    ax.set_ylim(rf + 0.7, -rf - 0.7)  # rows grow downwards, as in an image
    ax.set_aspect("equal")
    ax.set_xlabel("dx")
    ax.set_ylabel("dy")
    ax.set_title(
        f"radius {radius}: K = {len(offsets)} offsets o_k (blue, k in psa's order);\n"
        f"mirror -o_k (grey) and p itself complete the {2 * len(offsets) + 1}-cell disk",
        fontsize=9,
    )

    h, w = 14, 18
    rows, cols = nb.from_region(h, w, radius)
    for y in range(h):
        for x in range(w):
            inside = rows.start <= y < rows.stop and cols.start <= x < cols.stop
            ax2.add_patch(
                Rectangle((x, y), 1, 1, fc="#9ecae1" if inside else "white", ec="#bbbbbb", lw=0.5)
            )
    # one from-pixel and its partners
    py, px = rows.stop - 1, cols.start
    for dy, dx in offsets:
        ax2.add_patch(Rectangle((px + dx, py + dy), 1, 1, fc="#fdd0a2", ec="#bbbbbb", lw=0.5))
    ax2.add_patch(Rectangle((px, py), 1, 1, fc="#fd8d3c", ec="#333333", lw=0.8))
    ax2.set_xlim(0, w)
    ax2.set_ylim(h, 0)
    ax2.set_aspect("equal")
    ax2.set_xticks([0, cols.start, cols.stop, w])
    ax2.set_yticks([0, rows.stop, h])
    ax2.set_title(
        f"psa's from-region on a {h}x{w} map (blue): rows [0, H-{rf}), columns "
        f"[{rf}, W-{rf});\nits corner pixel (orange) and partners: all inside the map",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


LAYERS = [
    (
        "affext.cli",
        "`affext` command: one subcommand a registry stage, run, data, info, bench",
        "#fee6ce",
    ),
    (
        "affext.psa | affext.irn | affext.par",
        "psa's tensors, patch, scripts | IRN's walk, labels | AFA / ToCo's PAR",
        "#fdae6b",
    ),
    (
        "affext.stages",
        "registry (every stage once) | the stages | runner (per-image frame) | crf | "
        "config | pipeline",
        "#fdd0a2",
    ),
    (
        "affext.models | affext.data",
        "networks, trained (build, load), checkpoint | VOC reader, synthetic set, COCO, transforms",
        "#c7e9c0",
    ),
    (
        "affext.ops | files, records | errors | dist | workers",
        "ops' Python faces | atomic writes, records | AffextError, handler | process group"
        " | processes",
        "#9ecae1",
    ),
    ("affext._extension", "loads _C.abi3.so (torch.ops.load_library), build_info()", "#c6dbef"),
    ("csrc/", "STABLE_TORCH_LIBRARY schemas; CPU and CUDA kernels by dispatch key", "#dadaeb"),
]

# The per-op folders under csrc/ (drawn under the kernels' layer).
CSRC = [
    ("affinity/", "affinity.h\n_cpu  _cuda"),
    ("pair_loss/", "pair_loss.h\n_cpu  _cuda"),
    ("random_walk/", "random_walk.h\nwalk_plan.h\n_cpu  _cuda"),
    ("dense_crf/", "dense_crf.h\n_cpu  _cuda"),
    ("par/", "par.h\n_cpu  _cuda"),
    (
        "common/",
        "stable.h, macros.h\nneighborhood.h\nscalar_math.h\nparallel.h\n"
        "cuda_utils.cuh\nlaunch_cache.h",
    ),
]


def draw_layers(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9.5, 7.4))
    w, h, gap = 6.0, 0.62, 0.38
    top = len(LAYERS) * (h + gap)
    for i, (name, what, face) in enumerate(LAYERS):
        y = top - (i + 1) * (h + gap)
        _box(ax, 0, y, w, h, f"{name}\n{what}", face, size=8.5)
        if i:
            _arrow(ax, (w / 2, y + h + gap - 0.02), (w / 2, y + h + 0.02), "imports")
    y0, step = -1.75, w / len(CSRC)
    for j, (op, files) in enumerate(CSRC):
        _box(ax, j * step, y0, step - 0.1, 1.15, f"{op}\n{files}", "#efedf5", size=6)
        _arrow(ax, (w / 2, y0 + 1.75), (j * step + (step - 0.1) / 2, y0 + 1.17))
    ax.text(
        w + 0.25,
        top - 2.2 * (h + gap),
        "\n".join(
            [
                "Imports point down only:",
                "a helper that two layers need",
                "lives below both.",
                "",
                "Each op's per-element math is",
                "one AFFEXT_HOST_DEVICE header",
                "that its CPU and CUDA",
                "kernels share.",
                "",
                "Beside the layers:",
                "affext.reference (dense",
                "formulations written apart),",
                "affext.bench and benchmarks/",
                "(the ops against them),",
                "tests/; affext.extras (the",
                "optional extras).",
            ]
        ),
        fontsize=8,
        va="center",
    )
    ax.set_xlim(-0.2, w + 2.6)
    ax.set_ylim(y0 - 0.2, top + 0.1)
    ax.axis("off")
    ax.set_title("affext's layers", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


STAGES = [
    ("images + image-level labels", "", "JPEGImages/, Annotations/ or cls_labels.npy", None),
    (
        "train-cam",
        "images, labels",
        "train_cam/cam_net.pt (+ per-epoch checkpoint, log)",
        "CAMNet, §1",
    ),
    (
        "make-cam",
        "cam_net.pt, images",
        "make_cam/cam/<id>.npy, cam_pred/<id>.png",
        "multi-scale CAMs, §1",
    ),
    (
        "make-aff-labels",
        "cam/, images",
        "aff_labels/la/<id>.npy, ha/<id>.npy",
        "affext.dense_crf at\nalpha 4 and 32, §2",
    ),
    (
        "train-aff",
        "la/, ha/, images",
        "train_aff/aff_net.pt (+ per-epoch checkpoint, log)",
        "affext.pairwise_affinity\n+ affext.pair_loss, §3-4",
    ),
    (
        "make-rw",
        "aff_net.pt, cam/, images",
        "make_rw/rw/<id>.png, rw_crf/<id>.png",
        "affext.random_walk\n+ affext.dense_crf, §5",
    ),
    (
        "train-seg",
        "rw_crf/, images",
        "train_seg/seg_net.pt (+ per-epoch checkpoint, log)",
        "SegNet on the\npseudo labels, §8",
    ),
    (
        "make-seg",
        "seg_net.pt, images",
        "make_seg/seg/<id>.png, seg_crf/<id>.png",
        "multi-scale + flip, dCRF, §8",
    ),
    (
        "eval",
        "the predictions, masks",
        "eval/{cam,rw,rw_crf,seg,seg_crf}.json,\nmetrics.json, overview.png",
        "mIoU, §7",
    ),
]


def draw_pipeline(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(10, 9.2))
    w, h, gap = 3.4, 0.72, 0.33
    top = len(STAGES) * (h + gap)
    for i, (name, reads, files, how) in enumerate(STAGES):
        y = top - (i + 1) * (h + gap)
        face = "#deebf7" if i == 0 else "#fdd0a2"
        _box(ax, 0, y, w, h, "", face)
        ax.text(
            w / 2,
            y + h * (0.64 if reads else 0.5),
            name,
            ha="center",
            va="center",
            fontsize=9.5,
            weight="bold",
        )
        if reads:
            ax.text(w / 2, y + h * 0.27, "reads " + reads, ha="center", va="center", fontsize=7.5)
        ax.text(w + 0.25, y + h / 2, files, fontsize=8, va="center", family="monospace")
        if how:
            ax.text(-0.25, y + h / 2, how, fontsize=8, va="center", ha="right", color="#444444")
        if i:
            _arrow(ax, (w / 2, y + h + gap - 0.02), (w / 2, y + h + 0.02))
    ax.text(
        w + 0.25,
        top + 0.05,
        "writes, under the work directory of `affext run`\n"
        "(each stage also records <stage>.config.json)",
        fontsize=8,
        va="bottom",
    )
    ax.set_xlim(-3.3, w + 5.6)
    ax.set_ylim(-0.1, top + 0.6)
    ax.axis("off")
    ax.set_title("The pipeline's data path (`affext run`)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def main() -> None:
    draw_neighborhood(DOCS / "neighborhood.png")
    draw_layers(DOCS / "layers.png")
    draw_pipeline(DOCS / "pipeline.png")


if __name__ == "__main__":
    main()

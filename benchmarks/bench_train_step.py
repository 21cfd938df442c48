"""An AffinityNet training step with affext's ops vs psa's formulation, side by side.

    pytest benchmarks/bench_train_step.py -s --benchmark-json=train_step.json

One SGD step (forward, loss, backward, update) of the same network on the same batch:
- affext: `model.affinity` (pairwise_affinity on the (B, K, H, W) layout) and `pair_loss`
  from the uint8 label map;
- psa: the feature, psa's dense affinity (index_select of from/to features and the explicit
  (B, C, K, n_from) difference, affext.reference.affinity), the three float pair masks built
  from the label map on the device and train_aff's loss (affext.reference.pair_loss).
GPU: resnet38 backbone, B=8, 448 crop (a 56x56 map), radius 5, psa's region; BatchNorm and the
first blocks frozen as psa fine-tunes. CPU: the tiny backbone, B=2, 96 crop, so that the
benchmark suite stays short. Prints the step times, peak memory (CUDA: max_memory_allocated
over the step, model and optimiser state included) and their ratios.
"""

from __future__ import annotations

import pytest
import torch

from affext import pair_loss
from affext.models import AffinityNet
from affext.models.backbones import build_backbone
from affext.reference.affinity import psa_affinity
from affext.reference.pair_loss import psa_affinity_labels, psa_pair_loss

RADIUS = 5
SHAPES = {  # device: (backbone, batch, crop)
    "cuda": ("resnet38", 8, 448),
    "cpu": ("tiny", 2, 96),
}
_results: dict = {}


def _label_map(batch: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Blocks of background, two classes and ignored pixels, as psa's label maps look."""
    values = torch.tensor([0, 0, 0, 5, 12, 255], dtype=torch.uint8)
    blocks = (size + 3) // 4
    coarse = values[torch.randint(0, len(values), (batch, blocks, blocks), generator=gen)]
    return coarse.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, :size, :size].contiguous()


def _affext_loss(model, images, labels):
    return pair_loss(model.affinity(images, RADIUS), labels, RADIUS, "psa").loss


def _psa_loss(model, images, labels):
    aff = psa_affinity(model(images), RADIUS)
    return psa_pair_loss(aff, *psa_affinity_labels(labels, RADIUS))["loss"]


LOSSES = {"affext": _affext_loss, "psa": _psa_loss}


def make_step(impl: str, device: str):
    """A training step of a fresh network (seeded: both implementations train the same one)."""
    backbone_name, batch, crop = SHAPES[device]
    torch.manual_seed(0)
    model = AffinityNet(build_backbone(backbone_name, freeze=True)).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, crop, crop, generator=gen).to(device)
    labels = _label_map(batch, crop // 8, gen).to(device)
    loss_fn = LOSSES[impl]

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, images, labels)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return loss

    return step


def _peak_cuda_bytes(step) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    return torch.cuda.max_memory_allocated()


@pytest.mark.parametrize("impl", ["psa", "affext"])
def test_train_step(benchmark, device, impl):
    backbone_name, batch, crop = SHAPES[device]
    benchmark.group = f"AffinityNet train step {device} {backbone_name} B={batch} crop {crop}"
    step = make_step(impl, device)
    loss = step()  # warm-up (cuDNN autotuning, allocator)
    assert torch.isfinite(loss)
    benchmark.pedantic(step, rounds=5 if device == "cuda" else 3)
    peak = _peak_cuda_bytes(step) if device == "cuda" else None
    benchmark.extra_info["peak_bytes"] = peak
    median = benchmark.stats.stats.median
    _results[(device, impl)] = (median, peak)
    other = _results.get((device, "psa"))
    if impl == "affext" and other:
        line = (
            f"\n[{device} {backbone_name} B={batch} crop {crop}] affext {median * 1e3:.1f} ms, "
            f"psa {other[0] * 1e3:.1f} ms per step: {other[0] / median:.2f}x"
        )
        if peak:
            line += (
                f"; peak memory affext {peak / 2**30:.2f} GiB, psa {other[1] / 2**30:.2f} GiB "
                f"({other[1] / peak:.2f}x)"
            )
        print(line)
    if device == "cuda":
        del step
        torch.cuda.empty_cache()


def test_losses_agree_on_the_same_network():
    # The two steps train the same network on the same batch: their first losses agree
    # (psa's region: the same pairs), so the timed work is the same work.
    device = "cpu"
    losses = {impl: make_step(impl, device)().item() for impl in LOSSES}
    assert losses["affext"] == pytest.approx(losses["psa"], rel=1e-5)

"""`affext bench`: the quick run end to end (its JSON schema, its plot), and the decisions it
makes before running anything (skips from a memory estimate or a time prediction).
No timing is asserted: only that every figure is there and is a finite number."""

import argparse
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import affext
from affext import bench
from affext.bench.cases import _walk_dense_bytes
from affext.bench.runner import ratios, skip_reason

ENTRY_KEYS = {"id", "op", "group", "title", "params", "n", "results", "ratios"}
ENV_KEYS = {
    "affext",
    "build",
    "python",
    "platform",
    "cpu",
    "cpu_count",
    "threads",
    "interop_threads",
    "torch",
    "cuda",
    "gpu",
    "dtype",
    "float32_matmul_precision",
    "load_average",
    "memory_total_bytes",
}


def _finite_positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    # One thread: on a shared 2-core machine two threads wait on each other's time slices.
    args = parser.parse_args(
        [
            "--quick",
            "--threads",
            "1",
            "--json",
            str(out / "bench.json"),
            "--plot",
            str(out / "bench.png"),
        ]
    )
    assert bench.main(args) == 0
    with open(out / "bench.json") as f:
        report = json.load(f)
    return report, out / "bench.png"


def test_quick_report_schema(quick_report):
    report, _ = quick_report
    assert report["schema"] == "affext-bench" and report["schema_version"] == 1
    assert report["mode"] == "quick" and "quick" in report["note"]
    assert report["device"] == "cpu"
    assert set(report["environment"]) >= ENV_KEYS
    assert report["environment"]["threads"] == 1
    assert set(report["settings"]) >= {"repeats", "warmup", "budget_s", "memory_limit_bytes"}
    ids = [e["id"] for e in report["benchmarks"]]
    assert ids == [p.id for p in bench.plan(quick=True)]
    ops = {"affinity", "pair_loss", "par", "random_walk", "dense_crf"}
    assert {e["op"] for e in report["benchmarks"]} == ops
    for entry in report["benchmarks"]:
        assert set(entry) == ENTRY_KEYS, entry["id"]
        params = entry["params"]
        area = params["height"] * params["width"] if "height" in params else params["size"] ** 2
        assert entry["n"] == area
        assert list(entry["results"])[0] == "affext"
        for impl, res in entry["results"].items():
            assert res["status"] in bench.STATUSES, (entry["id"], impl)
            if res["status"] != "ok":
                assert res["reason"], (entry["id"], impl)
                continue
            t = res["time"]
            assert all(_finite_positive(t[k]) for k in ("median_s", "min_s", "max_s"))
            assert t["min_s"] <= t["median_s"] <= t["max_s"] and t["repeats"] >= 1
            assert isinstance(res["peak_extra_bytes"], int) and res["peak_extra_bytes"] >= 0
        # A ratio for each reference that ran, when affext ran; every one a finite number.
        ran = {i for i, r in entry["results"].items() if r["status"] == "ok"}
        expected = ran - {"affext"} if "affext" in ran else set()
        assert set(entry["ratios"]) == expected, entry["id"]
        for ratio in entry["ratios"].values():
            assert set(ratio) == {"time", "memory"}
            assert _finite_positive(ratio["time"]) and _finite_positive(ratio["memory"])


def test_quick_report_measures_the_affinity_against_psa(quick_report):
    report, _ = quick_report
    entry = next(e for e in report["benchmarks"] if e["op"] == "affinity")
    assert {r["status"] for r in entry["results"].values()} == {"ok"}
    assert set(entry["ratios"]) == {"psa-dense"}


def test_quick_report_measures_the_walk_against_both_references(quick_report):
    report, _ = quick_report
    for entry in report["benchmarks"]:
        if entry["op"] == "random_walk" and entry["group"] == "shapes":
            assert set(entry["ratios"]) == {"psa-dense", "torch-sparse"}, entry["id"]


def test_quick_report_measures_the_dense_crf_against_pydensecrf(quick_report):
    # affext and pydensecrf on the same images, each run or skipped for what is installed.
    report, _ = quick_report
    entries = [e for e in report["benchmarks"] if e["op"] == "dense_crf"]
    assert [e["id"].split("-", 1)[1] for e in entries] == ["3", "21", "la-ha"]
    have_op = hasattr(affext, "dense_crf")
    have_pydensecrf = importlib.util.find_spec("pydensecrf") is not None
    for entry in entries:
        ours, ref = entry["results"]["affext"], entry["results"]["pydensecrf"]
        assert ours["status"] == ("ok" if have_op else "skipped"), ours
        assert ref["status"] == ("ok" if have_pydensecrf else "skipped"), ref
        if not have_op:
            assert "affext.dense_crf unavailable" in ours["reason"]
        assert set(entry["ratios"]) == ({"pydensecrf"} if have_op and have_pydensecrf else set())
    assert entries[2]["params"]["pair"] is True


def test_quick_report_measures_par_against_their_formulation(quick_report):
    report, _ = quick_report
    entry = next(e for e in report["benchmarks"] if e["op"] == "par")
    assert {r["status"] for r in entry["results"].values()} == {"ok"}
    assert set(entry["ratios"]) == {"afa-toco"}


def test_quick_plot_is_a_png(quick_report):
    _, png = quick_report
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_skip_reason_from_memory_estimate_and_predicted_time():
    # psa's dense walk on a 512x512 map: three N x N float32 matrices, N = 262144.
    need = _walk_dense_bytes(size=512)
    assert need == 3 * 4 * 262144**2
    reason = skip_reason("psa-dense", int(need), 16 * 10**9, None, 30.0)
    assert reason.startswith("skipped: psa-dense needs ~825 GB") and "16 GB" in reason
    reason = skip_reason("psa-dense", 10**6, 16 * 10**9, 150.0, 30.0, "basis")
    assert "150 s" in reason and "30 s budget" in reason and "basis" in reason
    assert skip_reason("affext", 10**6, 16 * 10**9, 1.0, 30.0) is None


def test_runner_skips_before_building(monkeypatch):
    # A reference too big by its estimate, and one predicted too slow from a smaller size,
    # are skipped without building their inputs (the builder records any call).
    built = []

    def builder(device, size):
        built.append(size)
        return lambda: None

    monkeypatch.setitem(bench.CASES, "test/huge", builder)
    monkeypatch.setitem(bench.CASE_INFO, "test/huge", bench.CaseInfo(peak_bytes=lambda size: 1e15))
    monkeypatch.setitem(bench.CASES, "test/slow", builder)
    monkeypatch.setitem(bench.CASE_INFO, "test/slow", bench.CaseInfo(time_exponent=3))
    settings = bench.Settings(budget_s=10.0, memory_limit_bytes=10**9)
    runner = bench.Runner("cpu", settings, probe=None, log=lambda line: None)
    small, big = _point(16), _point(64)
    assert runner.skip("slow", "test/slow", big) is None  # nothing measured yet
    # As if "test/slow" had taken 1 s at 16x16: 64x64 has 16x the pixels, so ~4096 s.
    runner._history[runner._series("test/slow", small)] = [(small.n, 1.0)]
    huge = runner._result("huge", "test/huge", big)
    slow = runner._result("slow", "test/slow", big)
    assert huge["status"] == "skipped" and "needs ~1e+06 GB" in huge["reason"]
    assert slow["status"] == "skipped" and "4.1e+03 s" in slow["reason"]
    assert "1 s at 16x16, time ~ N^3" in slow["reason"]
    assert built == []
    assert ratios({"affext": {"status": "ok"}, "huge": huge, "slow": slow}) == {}


def _point(size: int) -> bench.Point:
    return bench.Point(
        f"test/{size}",
        "test",
        "scaling",
        "test",
        dict(size=size),
        {"huge": "test/huge", "slow": "test/slow"},
    )


def test_python_dash_m_affext_bench():
    root = Path(__file__).resolve().parents[1]  # this checkout's affext
    out = subprocess.run(
        [sys.executable, "-m", "affext.bench", "--help"], capture_output=True, text=True, cwd=root
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: affext bench") and "--quick" in out.stdout

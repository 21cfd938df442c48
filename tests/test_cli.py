"""The `affext` command: subcommands, errors, and one end-to-end `affext run`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import miou_by_hand, run_args, small_voc
from PIL import Image

import affext
from affext.cli import main
from affext.data import read_id_list

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("train-cam", "make-cam", "make-aff-labels", "train-aff", "make-rw")
STAGES += ("train-seg", "make-seg")


def test_info_prints_build_info(capsys):
    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(affext.build_info()))
    assert main(["info"]) == 0
    assert "cuda_available" in capsys.readouterr().out


def test_data_synth(tmp_path, capsys):
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(tmp_path / "d"),
                "--num-train",
                "3",
                "--num-val",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    assert "3 train, 1 val" in capsys.readouterr().out
    assert len(list((tmp_path / "d" / "JPEGImages").glob("*.jpg"))) == 4
    lists = tmp_path / "d" / "ImageSets" / "Segmentation"
    assert (lists / "train.txt").read_text().split() == [
        "synth_00000",
        "synth_00001",
        "synth_00002",
    ]


def test_errors_exit_2_with_a_sentence(tmp_path, capsys):
    (tmp_path / "l.txt").write_text("a\n")
    code = main(
        [
            "eval",
            "--voc-root",
            str(tmp_path / "nowhere"),
            "--list",
            str(tmp_path / "l.txt"),
            "--pred-dir",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "affext eval: error: dataset root" in err and "does not exist" in err


def test_python_dash_m_affext():
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-m", "affext", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    for command in ("data", *STAGES, "eval", "run", "info", "bench"):
        assert command in out.stdout


# Runs Python with the pipeline extra's libraries made unimportable (None in sys.modules).
WITHOUT_PIPELINE = (
    "import sys\n"
    "for name in ('PIL', 'tqdm', 'pydensecrf', 'matplotlib'):\n"
    "    sys.modules[name] = None\n"
)


def _python_without_pipeline(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_PIPELINE + code], capture_output=True, text=True, env=env
    )


def test_ops_models_and_bench_import_without_the_pipeline_extra():
    out = _python_without_pipeline(
        "import torch, affext, affext.models, affext.bench\n"
        "feat = torch.randn(1, 4, 6, 6)\n"
        "print(tuple(affext.pairwise_affinity(feat, 2).shape))\n"
        "from affext.cli import main\n"
        "sys.exit(main(['info', '--json']))\n"
    )
    assert out.returncode == 0, out.stderr
    k = len(affext.neighborhood_offsets(2))
    assert out.stdout.startswith(f"(1, {k}, 6, 6)\n")
    assert json.loads(out.stdout.split("\n", 1)[1]) == json.loads(json.dumps(affext.build_info()))


def test_a_stage_without_the_pipeline_extra_says_which_extra_to_install(tmp_path):
    extra = "which come with the pipeline extra: pip install 'affext[pipeline]'"
    out = _python_without_pipeline("import affext.stages\n")
    assert out.returncode == 1
    assert (
        "MissingExtraError: affext's pipeline stages needs pillow, tqdm, " + extra
    ) in out.stderr
    out = _python_without_pipeline(
        "from affext.cli import main\n"
        f"sys.exit(main(['make-aff-labels', '--voc-root', {str(tmp_path)!r}, '--list', 'l',"
        " '--cam-dir', 'c', '--out', 'o']))\n"
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "affext make-aff-labels: error: affext's pipeline stages needs pillow, tqdm, " + extra
    )
    out = _python_without_pipeline(  # run's stage flags (--cam-epochs) need the stages too
        "from affext.cli import main\nsys.exit(main(['run', '--cam-epochs', '1']))\n"
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "affext run: error: affext's pipeline stages needs pillow, tqdm, " + extra
    )
    out = _python_without_pipeline(
        "import affext.bench.report as report\nreport.plot_report({'benchmarks': []}, 'x.png')\n"
    )
    one = extra.replace("which come ", "which comes ")  # one library
    assert "MissingExtraError: affext bench --plot needs matplotlib, " + one in out.stderr


def test_run_end_to_end(tmp_path, capsys):
    voc = small_voc(tmp_path / "voc", 8, 2)
    work = tmp_path / "work"
    args = run_args(
        voc,
        work,
        "--backbone",
        "tiny",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--cam-epochs",
        "1",
        "--aff-epochs",
        "1",
        "--seg-epochs",
        "1",
    )
    assert main(args) == 0
    metrics = json.loads((work / "metrics.json").read_text())
    # Each mIoU is the one the written labels give against the ground truth (computed here
    # apart from affext's evaluate; both round to 3 decimals).
    evals = read_id_list(voc / "ImageSets" / "Segmentation" / "val.txt")
    gt = [voc / "SegmentationClass" / f"{i}.png" for i in evals]
    for key, folder in (
        ("cam_miou", "make_cam/cam_pred"),
        ("rw_miou", "make_rw/rw"),
        ("rw_crf_miou", "make_rw/rw_crf"),
        ("seg_miou", "make_seg/seg"),
        ("seg_crf_miou", "make_seg/seg_crf"),
    ):
        pred = [work / folder / f"{i}.png" for i in evals]
        assert metrics[key] == pytest.approx(miou_by_hand(pred, gt), abs=1e-3), key
    # The options reached the stages: the tiny preset, with the command line's settings on top.
    run_config = json.loads((work / "run.config.json").read_text())["config"]
    assert (run_config["backbone"], run_config["device"], run_config["num_workers"]) == (
        "tiny",
        "cpu",
        0,
    )
    for stage, epochs in (("train_cam", 1), ("train_aff", 1)):
        cfg = run_config[stage]
        assert (cfg["epochs"], cfg["optimizer"], cfg["lr"]) == (epochs, "adam", 0.003), stage
        assert (cfg["backbone"], cfg["device"], cfg["num_workers"]) == ("tiny", "cpu", 0)
    assert run_config["make_rw"]["long_side"] == 320 and run_config["make_cam"]["long_side"] == 160
    assert metrics["eval_images"] == 2 and metrics["train_images"] == 8
    assert set(metrics["stage_seconds"]) == {*STAGES, "eval", "overview"}
    assert metrics["per_class_iou"]["rw"]["background"] is not None
    with Image.open(work / "overview.png") as im:
        assert im.width > 4 * 72 and im.height >= 2 * 128
    # the config and versions are recorded next to each stage's outputs
    for rec in (
        "run.config.json",
        "train_cam/train-cam.config.json",
        "make_rw/make-rw.config.json",
    ):
        data = json.loads((work / rec).read_text())
        assert data["versions"]["torch"] and "config" in data
    # a second run finds everything done and only re-evaluates
    assert main(args) == 0
    again = json.loads((work / "metrics.json").read_text())
    assert again["rw_miou"] == metrics["rw_miou"]
    # a stage's time is kept with its outputs: the resumed run reports it, not its own check
    seconds = again["stage_seconds"]["train-cam"]
    assert seconds == pytest.approx(metrics["stage_seconds"]["train-cam"], abs=0.5)

"""Several processes under real torchrun (gloo, CPU, one thread a rank) on a tiny synthetic set.

Two launches for the whole module, shared by the tests:
  two     `torchrun --nproc_per_node 2 -m affext run --config FILE --cam-epochs 2`: the whole
          pipeline, two ranks;
  nodes   two torchrun launches, --nnodes 2 --node_rank 0 / 1 on 127.0.0.1, one rank each:
          make-cam and make-rw from the networks of "two", then train-cam, in which rank 1
          SIGKILLs itself as epoch 2 starts;
and one process in this one: the same stages from the same inputs ("one"), and the killed
training resumed.

Training with two ranks matches one within TOL (max abs difference of every parameter and
buffer after 2 epochs of SGD; float order only: the global batch, its order, the crops, the
BatchNorm statistics and the schedule are the same). Generated files are byte-identical.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5

SETTINGS = {
    "backbone": "tiny",
    "device": "cpu",
    "num_workers": 0,
    "train_cam": {
        "batch_size": 4,
        "crop_size": 48,
        "resize_long": [56, 80],
        "long_side": None,
        "optimizer": "sgd",
        "lr": 0.01,
    },
    "make_cam": {"long_side": None, "scales": [1.0, 0.5]},
    "aff_labels": {"num_workers": 1},
    "train_aff": {
        "epochs": 2,
        "batch_size": 4,
        "crop_size": 72,
        "long_side": None,
        "optimizer": "sgd",
        "lr": 0.01,
    },
    "make_rw": {"long_side": None, "iterations": 8, "batch_size": 2, "crf_workers": 0},
}
GENERATED = (
    "make_cam/cam",
    "make_cam/cam_pred",
    "aff_labels/la",
    "aff_labels/ha",
    "make_rw/rw",
    "make_seg/seg",
)


def _env() -> dict:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        AFFEXT_DIST_TIMEOUT="60",  # a hang fails the test instead of the CI job
    )
    return env


def _torchrun(*args: str, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", *args]
    return subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw
    )


def _finish(proc: subprocess.Popen, timeout: float = 150) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s (a hang?):\n{out[-3000:]}")
    return proc.returncode, out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_config(work: Path):
    from affext.stages.config import RunConfig

    recorded = json.loads((work / "run.config.json").read_text())["config"]
    return RunConfig.for_backbone(recorded.pop("backbone"), **recorded)


def _ids(voc: Path, name: str) -> list[str]:
    return (voc / "ImageSets" / "Segmentation" / f"{name}.txt").read_text().split()


def _state(path: Path) -> dict[str, torch.Tensor]:
    from affext.models import read_checkpoint

    return read_checkpoint(path)["state_dict"]


def _max_difference(a: Path, b: Path) -> float:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)


def _same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names and names == sorted(p.name for p in b.iterdir()), (a, b)
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), f"{a / n} != {b / n}"


# -- the worker: this file run by torchrun -----------------------------------------------
def _worker(voc: str, work: str, source: str) -> None:
    from affext import dist
    from affext.stages import training
    from affext.stages.make_cam import make_cam
    from affext.stages.make_rw import make_rw
    from affext.stages.train_cam import train_cam

    torch.set_num_threads(1)
    voc, work, source = Path(voc), Path(work), Path(source)
    cfg = _run_config(source)
    both = _ids(voc, "trainval")
    cams = source / "make_cam" / "cam"
    make_cam(voc, both, source / "train_cam", work / "make_cam", cfg.make_cam, False)
    make_rw(voc, both, cams, source / "train_aff", work / "make_rw", cfg.make_rw, False)
    train_epoch = training._train_epoch

    def dying(*args, **kw):
        if dist.rank() == 1 and "epoch 2/" in args[7]:  # desc
            os.kill(os.getpid(), signal.SIGKILL)
        return train_epoch(*args, **kw)

    training._train_epoch = dying
    train_cam(voc, _ids(voc, "train"), work / "killed", cfg.train_cam, progress=False)
    dist.cleanup()


if __name__ == "__main__":
    _worker(*sys.argv[1:])
    sys.exit(0)


# -- the tests -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    from helpers import small_voc

    return small_voc(tmp_path_factory.mktemp("voc"), 8, 2, seed=3)


@pytest.fixture(scope="module")
def two(voc, tmp_path_factory) -> Path:
    """The whole pipeline with two ranks, through the command line and a config file."""
    from helpers import run_args

    tmp = tmp_path_factory.mktemp("two")
    config = tmp / "config.json"
    config.write_text(json.dumps(SETTINGS))
    work = tmp / "work"
    rc, out = _finish(
        _torchrun(
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "affext",
            *run_args(voc, work, "--config", str(config), "--cam-epochs", "2"),
        )
    )
    assert rc == 0, out[-4000:]
    return work


@pytest.fixture(scope="module")
def one(voc, two, tmp_path_factory) -> Path:
    """Each stage in this process, one rank, from the inputs "two" used."""
    from affext.stages.aff_labels import make_aff_labels
    from affext.stages.make_cam import make_cam
    from affext.stages.make_rw import make_rw
    from affext.stages.make_seg import make_seg
    from affext.stages.train_aff import train_aff
    from affext.stages.train_cam import train_cam

    work = tmp_path_factory.mktemp("one")
    cfg = _run_config(two)
    train, both = _ids(voc, "train"), _ids(voc, "trainval")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_cam(voc, train, work / "train_cam", cfg.train_cam, progress=False)
        make_cam(voc, both, two / "train_cam", work / "make_cam", cfg.make_cam, False)
        cams = two / "make_cam" / "cam"
        make_aff_labels(voc, train, cams, work / "aff_labels", cfg.aff_labels, False)
        aff = two / "aff_labels"
        train_aff(voc, train, aff, work / "train_aff", cfg.train_aff, False)
        make_rw(voc, both, cams, two / "train_aff", work / "make_rw", cfg.make_rw, False)
        evals = _ids(voc, "val")
        make_seg(voc, evals, two / "train_seg", work / "make_seg", cfg.make_seg, False)
    finally:
        torch.set_num_threads(threads)
    return work


def test_two_ranks_run_the_pipeline_with_the_config_file_and_flags(two):
    cfg = _run_config(two)
    assert cfg.train_cam.epochs == 2  # the flag
    assert (cfg.train_cam.optimizer, cfg.train_cam.lr) == ("sgd", 0.01)  # the file
    assert cfg.train_cam.dropout == 0.0  # the tiny preset under the file
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["train_images"] == 8 and metrics["eval_images"] == 2
    assert (two / "overview.png").is_file()
    # make-rw's throughput: the images of both ranks (train + eval, 10 in all), once
    throughput = json.loads((two / "make_rw" / "make-rw.throughput.json").read_text())
    assert (throughput["images"], throughput["processes"]) == (10, 2)
    log = json.loads((two / "train_cam" / "train-cam.log.json").read_text())
    assert [e["epoch"] for e in log] == [1, 2]
    events = list((two / "train_cam" / "tensorboard").glob("events.out.tfevents.*"))
    pytest.importorskip("tensorboard")
    assert len(events) == 1  # rank 0's only


def test_generation_with_two_ranks_is_byte_identical_to_one(two, one):
    for folder in GENERATED:
        _same_files(two / folder, one / folder)


def test_training_with_two_ranks_matches_one(two, one):
    """Same data, order, crops, global BatchNorm and schedule: float order only."""
    for stage, net in (("train_cam", "cam_net.pt"), ("train_aff", "aff_net.pt")):
        assert _max_difference(two / stage / net, one / stage / net) < TOL
    # training did move the weights (the comparison is not of two initialisations)
    from affext.stages.train_cam import build_cam_net

    trained = _state(two / "train_cam" / "cam_net.pt")
    init = build_cam_net("tiny", num_classes=trained["fc8.weight"].shape[0]).state_dict()
    moved = max((trained[k].double() - init[k].double()).abs().max().item() for k in init)
    assert moved > 100 * TOL


@pytest.fixture(scope="module")
def nodes(voc, two, tmp_path_factory) -> tuple[Path, list[str]]:
    """Two one-rank "nodes" on 127.0.0.1 (static rendezvous); their outputs."""
    work = tmp_path_factory.mktemp("nodes")
    endpoint = f"127.0.0.1:{_free_port()}"
    script = str(Path(__file__).resolve())
    launches = [
        _torchrun(
            "--nnodes=2",
            f"--node_rank={r}",
            "--nproc_per_node=1",
            f"--rdzv_endpoint={endpoint}",
            script,
            str(voc),
            str(work),
            str(two),
        )
        for r in (0, 1)
    ]
    return work, [_finish(proc, 120) for proc in launches]


def test_two_nodes_on_one_machine_generate_the_same_files(nodes, two):
    work, _ = nodes
    for folder in ("make_cam/cam", "make_cam/cam_pred", "make_rw/rw", "make_rw/rw_crf"):
        _same_files(work / folder, two / folder)


def test_a_killed_rank_stops_every_node_and_training_resumes_with_one_process(voc, two, nodes):
    from affext.models import read_checkpoint
    from affext.stages.train_cam import train_cam

    work, results = nodes
    (rc0, out0), (rc1, out1) = results
    assert rc1 != 0 and "Signal 9" in out1, out1[-3000:]  # the killed rank's node
    assert rc0 != 0, out0[-3000:]  # the other node stopped too (no hang: _finish's timeout)
    killed = work / "killed"
    assert not (killed / "cam_net.pt").exists()
    assert read_checkpoint(killed / "train-cam.checkpoint.pt")["meta"]["epoch"] == 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_cam(voc, _ids(voc, "train"), killed, _run_config(two).train_cam, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert _max_difference(killed / "cam_net.pt", two / "train_cam" / "cam_net.pt") < TOL


def test_a_changed_setting_is_refused_then_overwritten_from_that_stage_on(
    voc, two, one, nodes, tmp_path, capsys
):
    """On a copy of the two-rank run (after the tests that read it): a rerun with another
    walk beta is refused naming it; one that changes only speed settings reuses every
    output; --overwrite redoes make-rw and keeps the earlier stages."""
    import shutil

    from affext.cli import main

    work = tmp_path / "work"
    shutil.copytree(two, work)
    lists = voc / "ImageSets" / "Segmentation"
    config = tmp_path / "config.json"
    config.write_text(json.dumps(SETTINGS))
    argv = ["run", "--config", str(config), "--cam-epochs", "2", "--voc-root", str(voc)]
    argv += ["--train-list", str(lists / "train.txt"), "--eval-list", str(lists / "val.txt")]
    argv += ["--workdir", str(work), "--quiet"]
    cam_net = work / "train_cam" / "cam_net.pt"
    stamp = cam_net.stat().st_mtime_ns
    walked = work / "make_rw" / "rw" / f"{_ids(voc, 'val')[0]}.png"
    walked_stamp = walked.stat().st_mtime_ns  # copytree keeps the times: those of "two"
    config.write_text(json.dumps({**SETTINGS, "make_rw": {**SETTINGS["make_rw"], "beta": 4.0}}))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "make-rw" in err and "beta: 8.0 -> 4.0" in err and "--overwrite" in err
    assert walked.stat().st_mtime_ns == walked_stamp
    # speed settings only: nothing is redone
    faster = {**SETTINGS, "num_workers": 1, "make_rw": {**SETTINGS["make_rw"], "crf_workers": 1}}
    config.write_text(json.dumps(faster))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(argv) == 0
        assert walked.stat().st_mtime_ns == walked_stamp
        config.write_text(json.dumps({**SETTINGS, "make_rw": {**SETTINGS["make_rw"], "beta": 4.0}}))
        assert main([*argv, "--overwrite"]) == 0
    finally:
        torch.set_num_threads(threads)
    record = json.loads((work / "make_rw" / "make-rw.config.json").read_text())
    assert record["config"]["beta"] == 4.0
    assert json.loads((work / "run.config.json").read_text())["config"]["make_rw"]["beta"] == 4.0
    assert cam_net.stat().st_mtime_ns == stamp  # earlier stages kept
    assert walked.is_file() and walked.stat().st_mtime_ns != walked_stamp  # redone


def test_each_rank_takes_its_share_of_the_batches_one_process_trains_on():
    """The order of one process is DataLoader(shuffle=True)'s with the epoch's generator, as
    before processes were counted; with N, step k's images on all ranks are its batch k."""
    from torch.utils.data import DataLoader

    from affext.stages.replicas import _GlobalOrder

    data, seed, epoch, batch = list(range(23)), 70, 3, 4
    gen = torch.Generator().manual_seed(seed + epoch)
    plain = DataLoader(data, batch_size=batch, shuffle=True, drop_last=True, generator=gen)
    expected = [sorted(b.tolist()) for b in plain]
    assert len(expected) == 5 and expected != [sorted(data[i : i + 4]) for i in range(0, 20, 4)]
    for world in (1, 2, 4):
        steps = []
        for rank in range(world):
            order = _GlobalOrder(data, num_replicas=world, rank=rank, seed=seed, drop_last=True)
            order.set_epoch(epoch)
            loader = DataLoader(data, batch_size=batch // world, sampler=order, drop_last=True)
            steps.append([b.tolist() for b in loader])
        assert [sorted(sum(s, [])) for s in zip(*steps)] == expected, world


def test_a_global_batch_that_does_not_split_over_the_ranks_is_refused(monkeypatch, tmp_path):
    from affext import dist
    from affext.stages.train_cam import build_cam_net
    from affext.stages.training import TrainConfig, fit

    monkeypatch.setattr(dist, "world", lambda: 2)
    cfg = TrainConfig(backbone="tiny", batch_size=3, device="cpu", num_workers=0)
    with pytest.raises(ValueError, match="batch size 3 .* must be a multiple of 2"):
        fit(
            build_cam_net("tiny"),
            list(range(8)),
            None,
            name="train-cam",
            out_dir=tmp_path,
            config=cfg,
            device=torch.device("cpu"),
        )


def test_training_logs_without_tensorboard(monkeypatch, tmp_path):
    """TensorBoard is optional: without it no writer, and the step logger only counts."""
    from affext.stages import training

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    assert training._board(tmp_path, 0) is None
    log = training._Logger(None, "train-cam", 5, None)
    log({"loss": 1.0})
    assert log.step == 6 and not (tmp_path / "tensorboard").exists()

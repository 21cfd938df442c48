"""The stage registry: every stage there has its config, folder, record and command, and a new
entry is a new command and a new stage of `affext run`."""

import dataclasses
import json
import typing
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from affext import cli
from affext.stages import config, registry
from affext.stages.config import CRF_STAGES, PRESETS, STAGE_CONFIGS, RunConfig
from affext.stages.pipeline import evaluate_outputs, run_stages
from affext.stages.registry import STAGES, Flag, Input, Stage, stage


def test_every_stage_has_its_config_folder_and_command():
    names = [s.name for s in STAGES]
    stage_fields = [f.name for f in dataclasses.fields(RunConfig) if f.name in STAGE_CONFIGS]
    assert names == list(STAGE_CONFIGS) == stage_fields  # RunConfig's fields, in run order
    assert {f.name: f.type for f in dataclasses.fields(RunConfig) if f.name in names} == {
        s.name: s.config for s in STAGES
    }
    hints = typing.get_type_hints(RunConfig)  # the run-wide settings' and the stages' types
    assert hints["backbone"] is str and hints["train_cam"] is stage("train_cam").config
    assert set(PRESETS["tiny"]) <= set(names) and set(CRF_STAGES) <= set(names)
    commands = cli._parser(with_bench=False)[1]  # the commands' parsers by name
    for s in STAGES:
        assert s.command in commands, s.command
        assert s.output("work") == Path("work") / s.name
        for source in s.inputs:  # an earlier stage's output (output() checks the folder)
            earlier = stage(source.stage)
            assert names.index(earlier.name) < names.index(s.name)
            assert earlier.output("w", source.sub) == Path("w", earlier.name, source.sub)
        for flag in s.flags:
            assert flag.field in s.fields, (s.name, flag.field)


def test_one_stage_by_each_of_its_spellings():
    aff = stage("aff_labels")
    assert stage("make-aff-labels") is aff and stage("make_aff_labels") is aff
    assert (aff.name, aff.command, aff.function.__name__) == (
        "aff_labels",
        "make-aff-labels",
        "make_aff_labels",
    )
    with pytest.raises(ValueError, match="no stage 'make-aff'"):
        stage("make-aff")
    with pytest.raises(ValueError, match="writes no folder 'cams'"):
        stage("make_cam").output("w", "cams")


def test_the_commands_take_their_stages_inputs_and_outputs():
    parser, commands, _ = cli._parser(with_bench=False)
    args = parser.parse_args(
        ["make-rw", "--voc-root", "v", "--list", "l", "--cam-dir", "c", "--aff-net", "a"]
        + ["--out", "o", "--alpha", "4", "--iterations", "8", "--no-crf"]
    )
    assert (args.cam_dir, args.aff_net, args.alpha, args.iterations, args.no_crf) == (
        "c",
        "a",
        4.0,
        8,
        True,
    )
    help_text = commands["make-cam"].format_help()
    assert "writes OUT/cam/*.npy and OUT/cam_pred/*.png" in help_text


@dataclass
class DummyConfig:
    """A stage config for the test's own stage."""

    size: int = 3
    device: str = "auto"
    num_workers: int = 0


def _dummy(voc_root, ids, cams, out_dir, config=None, progress=True):
    """A stage that writes its ids, its input folder and its config's size."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "done.json").write_text(json.dumps([list(ids), str(cams), config.size]))
    return out


DUMMY = Stage(
    "dummy",
    "make-dummy",
    _dummy,
    DummyConfig,
    "a test's stage",
    ids="eval",
    inputs=(Input("make_cam", "--cam-dir", sub="cam"),),
    outputs=("done.json",),
    flags=(Flag("size"),),
)


def test_a_new_entry_is_a_command_and_a_stage_of_the_run(tmp_path, monkeypatch, capsys):
    def nothing(*args, progress=True, **kwargs):
        pass

    others = tuple(replace(s, function=nothing) for s in STAGES)
    monkeypatch.setattr(registry, "STAGES", (*others, DUMMY))
    (tmp_path / "ids.txt").write_text("a\nb\n")
    argv = ["make-dummy", "--voc-root", "v", "--list", str(tmp_path / "ids.txt")]
    argv += ["--cam-dir", "c", "--out", str(tmp_path / "one"), "--size", "5", "--quiet"]
    assert cli.main(argv) == 0
    assert json.loads((tmp_path / "one" / "done.json").read_text()) == [["a", "b"], "c", 5]
    # RunConfig's stage fields come from the entries: the new one is a field of its own
    run_fields = dataclasses.fields(
        config._with_stage_fields(type("Run", (), {}), STAGES + (DUMMY,))
    )
    assert [f.name for f in run_fields] == [s.name for s in STAGES] + ["dummy"]
    assert run_fields[-1].default_factory() == DummyConfig()
    cfg = RunConfig.for_backbone("tiny")
    cfg.dummy = DummyConfig(size=7)  # RunConfig's field once the entry is in STAGES
    work = tmp_path / "work"
    times = run_stages("v", ["a"], ["b", "c"], work, cfg, progress=False)
    assert list(times) == [s.command for s in STAGES] + ["make-dummy"]
    assert json.loads((work / "dummy" / "done.json").read_text()) == [
        ["b", "c"],
        str(work / "make_cam" / "cam"),
        7,
    ]
    assert (work / "dummy" / "make-dummy.seconds.json").is_file()


def test_the_runs_scores_are_the_registrys_scored_outputs(tmp_path, monkeypatch):
    scored = []
    monkeypatch.setattr(
        "affext.stages.pipeline.evaluate",
        lambda voc, folder, ids, out, cfg, progress: scored.append((folder, out)) or {},
    )
    work = tmp_path / "w"
    evaluate_outputs("v", ["a"], work, with_crf=True, seg_crf=False, progress=False)
    assert scored == [
        (work / "make_cam" / "cam_pred", work / "eval" / "cam.json"),
        (work / "make_rw" / "rw", work / "eval" / "rw.json"),
        (work / "make_rw" / "rw_crf", work / "eval" / "rw_crf.json"),
        (work / "make_seg" / "seg", work / "eval" / "seg.json"),
    ]
    scored.clear()
    evaluate_outputs("v", ["a"], work, with_crf=False, progress=False)
    assert [out.stem for _, out in scored] == ["cam", "rw"]

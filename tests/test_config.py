"""`affext run --config FILE`, --print-config and the record check that refuses to reuse
outputs made with other settings (the refusal and --overwrite on a real run directory are
in test_dist.py, which has one)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from affext.cli import main
from affext.records import NON_OUTPUT_SETTINGS, check_config, config_changes, record_config
from affext.stages.config import RunConfig, config_text, read_config_file
from affext.stages.make_rw import MakeRwConfig

yaml = pytest.importorskip("yaml")


def _printed(capsys, *argv) -> dict:
    assert main(["run", "--print-config", *argv]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def _plain(cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def test_print_config_gives_the_presets_defaults_in_a_form_config_reads(capsys, tmp_path):
    printed = _printed(capsys, "--backbone", "tiny")
    tiny = RunConfig.for_backbone("tiny")
    assert printed["backbone"] == "tiny"
    assert printed["train_cam"]["optimizer"] == "adam" and printed["train_cam"]["lr"] == 0.003
    assert printed["make_rw"]["beta"] == 8.0 and printed["aff_labels"]["alpha_high"] == 32.0
    assert "backbone" not in printed["train_cam"]  # the run-wide settings once, at the top
    # read back, it is the same config
    path = tmp_path / "tiny.yaml"
    path.write_text(config_text(tiny))
    values = read_config_file(path)
    assert _plain(RunConfig.for_backbone(values.pop("backbone"), **values)) == _plain(tiny)
    # psa's defaults without a preset
    printed = _printed(capsys, "json")
    assert printed["train_cam"]["optimizer"] == "sgd" and printed["train_cam"]["lr"] == 0.1


def test_a_file_and_flags_together_the_flags_win(capsys, tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text(
        "backbone: tiny\n"
        "seed: 5\n"
        "train_cam: {lr: 0.05, epochs: 7, resize_long: [60, 90]}\n"
        "make_rw: {beta: 4.0, crf: {bilateral_srgb: 7.0}}\n"
        "aff_labels: {alpha_low: 2.0}\n"
    )
    printed = _printed(capsys, "--config", str(path), "--cam-epochs", "3", "--device", "cpu")
    assert printed["train_cam"]["epochs"] == 3  # the flag over the file
    assert printed["train_cam"]["lr"] == 0.05 and printed["train_cam"]["resize_long"] == [60, 90]
    assert printed["train_cam"]["optimizer"] == "adam"  # the tiny preset under the file
    assert printed["make_rw"]["beta"] == 4.0 and printed["aff_labels"]["alpha_low"] == 2.0
    assert printed["make_rw"]["crf"]["bilateral_srgb"] == 7.0
    assert printed["make_rw"]["crf"]["bilateral_sxy"] == 80.0  # the rest of crf: defaults
    assert (printed["device"], printed["seed"]) == ("cpu", 5)
    # the stage configs are typed: a tuple, a CRFConfig
    values = read_config_file(path)
    cfg = RunConfig.for_backbone(values.pop("backbone"), **values)
    assert cfg.train_cam.resize_long == (60, 90) and cfg.make_rw.crf.bilateral_srgb == 7.0
    assert cfg.train_aff.seed == 5  # run-wide settings reach every stage


@pytest.mark.parametrize(
    "text, message",
    [
        ("learning_rate: 0.1\n", "unknown setting(s) ['learning_rate']"),
        ("train_cam: {lrate: 0.1}\n", "train_cam has no setting(s) ['lrate']"),
        ("make_rw: {crf: {sxy: 1}}\n", "make_rw.crf has no setting(s) ['sxy']"),
        ("make_rw: 3\n", "make_rw must be a mapping"),
        ("a: [\n", "cannot read config file"),
    ],
)
def test_config_file_errors_name_the_file_and_setting(capsys, tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["run", "--print-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err


def test_run_without_inputs_says_which_are_needed(capsys):
    assert main(["run", "--backbone", "tiny"]) == 2
    assert "--voc-root, --train-list, --eval-list, --workdir needed" in capsys.readouterr().err


def test_json_config_files_and_paths_from_the_file(tmp_path, capsys):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"backbone": "tiny", "make_cam": {"scales": [1.0]}}))
    printed = _printed(capsys, "--config", str(path))
    assert printed["make_cam"]["scales"] == [1.0]
    path.write_text(json.dumps({"voc_root": str(tmp_path / "nowhere"), "train_list": "t"}))
    assert main(["run", "--config", str(path)]) == 2
    assert "--eval-list, --workdir needed" in capsys.readouterr().err


def test_a_changed_setting_is_named_old_to_new_and_speed_settings_are_not_changes(tmp_path):
    old = MakeRwConfig(beta=8.0, device="cpu", num_workers=0, crf_workers=0)
    record_config(tmp_path, "make-rw", old)
    assert set(NON_OUTPUT_SETTINGS) >= {"device", "num_workers", "crf_workers"}
    faster = dataclasses.replace(old, device="cuda", num_workers=4, crf_workers=8)
    assert config_changes(tmp_path, "make-rw", faster) == {}
    check_config(tmp_path, "make-rw", faster)  # no error
    changed = dataclasses.replace(old, beta=4.0, crf=dataclasses.replace(old.crf, iterations=5))
    assert config_changes(tmp_path, "make-rw", changed) == {
        "beta": (8.0, 4.0),
        "crf.iterations": (10, 5),
    }
    with pytest.raises(ValueError, match=r"beta: 8\.0 -> 4\.0.*--overwrite"):
        check_config(tmp_path, "make-rw", changed)
    # no record, no outputs to protect
    assert config_changes(tmp_path / "elsewhere", "make-rw", changed) == {}


def test_the_crf_backend_is_a_speed_setting_and_an_old_record_without_it_resumes(tmp_path):
    old = MakeRwConfig(device="cpu", num_workers=0, crf_workers=0)
    record_config(tmp_path, "make-rw", old)
    reference = dataclasses.replace(old, crf=dataclasses.replace(old.crf, backend="pydensecrf"))
    assert config_changes(tmp_path, "make-rw", reference) == {}
    # a record written before the setting existed (no crf.backend) resumes under either
    path = tmp_path / "make-rw.config.json"
    record = json.loads(path.read_text())
    del record["config"]["crf"]["backend"]
    path.write_text(json.dumps(record))
    for cfg in (old, reference):
        check_config(tmp_path, "make-rw", cfg)
    # only crf.backend is exempt: a stage setting named "backend" elsewhere would count
    assert "backend" not in NON_OUTPUT_SETTINGS and "crf.backend" in NON_OUTPUT_SETTINGS


def test_crf_backend_from_the_flag_or_a_file_reaches_every_dcrf_stage(capsys, tmp_path):
    printed = _printed(capsys, "json")
    assert {printed[s]["crf"]["backend"] for s in ("aff_labels", "make_rw", "make_seg")} == {
        "affext"
    }
    printed = _printed(capsys, "json", "--crf-backend", "pydensecrf")
    for stage in ("aff_labels", "make_rw", "make_seg"):
        assert printed[stage]["crf"]["backend"] == "pydensecrf"
        assert printed[stage]["crf"]["iterations"] == 10  # the rest of crf: defaults
    path = tmp_path / "settings.yaml"
    path.write_text("make_seg: {crf: {backend: pydensecrf, iterations: 5}}\n")
    printed = _printed(capsys, "json", "--config", str(path))
    expected = {**printed["make_rw"]["crf"], "backend": "pydensecrf", "iterations": 5}
    assert printed["make_seg"]["crf"] == expected
    assert printed["make_rw"]["crf"]["backend"] == "affext"
    path.write_text("make_rw: {crf: {backend: densecrf}}\n")
    assert main(["run", "--print-config", "--config", str(path)]) == 2
    assert "crf backend must be one of 'affext', 'pydensecrf', got 'densecrf'" in (
        capsys.readouterr().err
    )

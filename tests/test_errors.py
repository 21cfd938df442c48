"""affext's error family and the one way its command lines report errors."""

import ast
import errno
from pathlib import Path

import pytest

import affext
from affext.cli import main
from affext.data import DatasetError
from affext.errors import AffextError, run_command, user_message
from affext.extras import MissingExtraError
from affext.irn import cli as irn_cli
from affext.psa import cli as psa_cli
from affext.records import ConfigChangedError
from affext.safe_load import UnsafeFileError

PACKAGE = Path(affext.__file__).parent


def test_every_error_class_of_the_package_is_an_affext_error():
    """Each class named *Error in the package's source derives from AffextError and keeps
    the builtin its callers catch."""
    defined = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                defined.add(node.name)
    known = {
        DatasetError: ValueError,
        UnsafeFileError: ValueError,
        ConfigChangedError: ValueError,
        MissingExtraError: ImportError,
    }
    assert defined == {"AffextError"} | {cls.__name__ for cls in known}
    for cls, builtin in known.items():
        assert issubclass(cls, AffextError) and issubclass(cls, builtin), cls


def _raiser(exc):
    def raise_it(*args, **kwargs):
        raise exc

    return raise_it


def _commands(tmp_path, monkeypatch, exc):
    """The same failure in a command of `affext`, `python -m affext.psa` and `python -m
    affext.irn`: (how each is run, the name its errors carry)."""
    monkeypatch.setattr("affext.data.synth.make_synthetic_voc", _raiser(exc))
    monkeypatch.setattr("affext.psa.scripts.convert_weights", _raiser(exc))
    monkeypatch.setattr("affext.irn.stage.make_sem_seg_labels", _raiser(exc))
    ids = tmp_path / "ids.txt"
    ids.write_text("a\n")
    irn = ["make-sem-seg-labels", "--voc12_root", str(tmp_path), "--infer_list", str(ids)]
    return [
        (lambda: main(["data", "synth", "--out", str(tmp_path / "d")]), "affext data"),
        (
            lambda: psa_cli.main(["convert_weights", "a.params", "b.pth"]),
            "affext psa convert_weights",
        ),
        (lambda: irn_cli.main(irn), "affext irn make-sem-seg-labels"),
        (lambda: main(["irn", *irn]), "affext irn"),
    ]


@pytest.mark.parametrize(
    "exc",
    [
        DatasetError("no image for id 'a'"),
        PermissionError(errno.EACCES, "Permission denied", "/nowhere/out"),
        OSError(errno.ENOSPC, "No space left on device"),
    ],
    ids=["DatasetError", "PermissionError", "ENOSPC"],
)
def test_affext_psa_and_irn_report_an_error_alike(tmp_path, monkeypatch, capsys, exc):
    message = user_message(exc)
    assert message  # a sentence, not a traceback
    for command, prog in _commands(tmp_path, monkeypatch, exc):
        assert command() == 2, prog
        assert capsys.readouterr().err == f"{prog}: error: {message}\n"


def test_the_handler_keeps_bugs_and_reports_ctrl_c(capsys):
    with pytest.raises(TypeError):  # not a user's error: its traceback stays
        run_command("affext x", _raiser(TypeError("bug")), None)
    assert run_command("affext x", _raiser(KeyboardInterrupt()), None) == 130
    assert "affext x: interrupted; run the same command again" in capsys.readouterr().err
    assert run_command("affext x", lambda args: 3, None) == 3
    assert run_command("affext x", lambda args: "done", None) == 0
    exc = DatasetError("bad")
    assert run_command("affext x", _raiser(exc), None) == 2
    assert capsys.readouterr().err == "affext x: error: bad\n"

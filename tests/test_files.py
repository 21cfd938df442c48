"""affext.files: atomic writes."""

import os
import stat

import pytest

from affext.files import atomic_save


def test_atomic_save_gives_the_permissions_of_a_plain_open(tmp_path):
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    atomic = tmp_path / "atomic.bin"
    atomic_save(atomic, lambda f: f.write(b"x"))
    assert atomic.read_bytes() == b"x"
    assert stat.S_IMODE(os.stat(atomic).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)


def test_atomic_save_leaves_the_old_file_and_no_temporary_when_the_write_fails(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def fail(f):
        f.write(b"partial")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        atomic_save(path, fail)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_the_records_names_are_still_found_in_files():
    import affext.files as files
    import affext.records as records

    for name in files._MOVED:
        assert getattr(files, name) is getattr(records, name)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        files.nothing  # noqa: B018

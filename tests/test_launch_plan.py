"""The CUDA launch path's host logic (csrc/random_walk/walk_plan.h, csrc/common/launch_cache.h)
checked on the CPU: tests/cpp/test_launch_plan.cpp, built with the C++ compiler and run."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_launch_plan_host_logic(tmp_path):
    cxx = shlex.split(os.environ.get("CXX", "c++"))
    if shutil.which(cxx[0]) is None:
        pytest.skip(f"no C++ compiler {cxx[0]!r}")
    exe = tmp_path / "test_launch_plan"
    source = ROOT / "tests" / "cpp" / "test_launch_plan.cpp"
    build = [
        *cxx,
        "-std=c++17",
        "-O1",
        "-pthread",
        f"-I{ROOT / 'csrc'}",
        str(source),
        "-o",
        str(exe),
    ]
    subprocess.run(build, check=True, timeout=300)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all checks passed" in run.stdout

"""Build of the affext._C library.

The library is built against PyTorch's stable ABI (TORCH_TARGET_VERSION 2.13, csrc/common/
stable.h) and links no Python: built with py_limited_api and tagged abi3 (cp310), one wheel
serves every CPython >= 3.10 and every torch >= 2.13 of its platform (and, built with CUDA, of
its CUDA major version). affext/_extension.py loads it with torch.ops.load_library.

The CPU kernels are always compiled. The CUDA kernels are compiled when torch is a
CUDA build, nvcc is found and a GPU is visible (a CPU-only machine then builds in a minute
instead of four); AFFEXT_CUDA=1 forces them (and fails loudly if that is impossible; CI and
GPU-less build hosts use it), AFFEXT_CUDA=0 leaves them out.

CUDA architectures: TORCH_CUDA_ARCH_LIST when set; else those of the visible GPUs; else
PORTABLE_ARCHS (the ones this nvcc supports) with PTX of the newest, which the driver of a
newer GPU compiles at first use. `affext info` lists what was built.

The C++ compiler must link libstdc++ dynamically: with a static copy inside affext._C, an
error raised by an op (a std::runtime_error) cannot be caught by torch, and the process aborts or
segfaults instead of raising a Python exception. The build warns when the compiler
(CXX, else c++) links it statically; set CXX (and CC) to another compiler, e.g. /usr/bin/g++.
"""

import glob
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# Compute capabilities built when no GPU is visible: V100 (7.0), T4 and RTX 20 (7.5), A100
# (8.0), RTX 30 and A10 (8.6), RTX 40 and L4 (8.9), H100 and H200 (9.0), and 9.0's PTX for
# newer GPUs. CUDA 13's nvcc no longer compiles for 7.0 (its oldest is 7.5): the archs the
# nvcc found does not list are left out.
PORTABLE_ARCHS = ("7.0", "7.5", "8.0", "8.6", "8.9", "9.0")


def _is_real_nvcc(path: str) -> bool:
    """True for the compiler binary itself, not a shell wrapper that execs it elsewhere."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _find_cuda_home() -> None:
    """Point CUDA_HOME at a toolkit root whose bin/nvcc is the real compiler.

    torch derives CUDA_HOME from the nvcc on PATH; where that is a wrapper script (as in
    /usr/local/bin/nvcc -> exec /usr/local/cuda-X/bin/nvcc) it guesses the wrong root.
    Must run before torch.utils.cpp_extension is imported, which reads CUDA_HOME once.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    on_path = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(on_path)))] if on_path else []
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for root in candidates:
        if _is_real_nvcc(os.path.join(root, "bin", "nvcc")):
            os.environ["CUDA_HOME"] = os.path.realpath(root)
            return


_find_cuda_home()

from torch.utils import cpp_extension  # noqa: E402  (after CUDA_HOME is settled)


def _want_cuda() -> bool:
    flag = os.environ.get("AFFEXT_CUDA", "").strip()
    import torch

    available = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if flag == "0":
        return False
    if flag == "1":
        if torch.version.cuda is None:
            raise RuntimeError("AFFEXT_CUDA=1 but the installed torch is a CPU-only build")
        if cpp_extension.CUDA_HOME is None:
            raise RuntimeError(
                "AFFEXT_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME "
                "to the toolkit root (the folder whose bin/ holds nvcc)"
            )
        return True
    return available and torch.cuda.is_available()


def _nvcc_archs() -> set[str] | None:
    """Compute capabilities the toolkit's nvcc compiles for ("7.5", "9.0", ...), or None."""
    nvcc = os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
    try:
        out = subprocess.run(
            [nvcc, "--list-gpu-arch"], capture_output=True, text=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    archs = {f"{m[1]}.{m[2]}" for m in re.finditer(r"compute_(\d+)(\d)[a-z]?\b", out)}
    return archs or None


def _default_archs() -> str:
    """TORCH_CUDA_ARCH_LIST for a build that did not set it (see the module docstring)."""
    import torch

    supported = _nvcc_archs()
    if torch.cuda.is_available():
        devices = range(torch.cuda.device_count())
        capabilities = {torch.cuda.get_device_capability(i) for i in devices}
        visible = [f"{major}.{minor}" for major, minor in sorted(capabilities)]
        missing = [a for a in visible if supported is not None and a not in supported]
        if missing:
            raise RuntimeError(
                f"the visible GPU(s) need compute capability {', '.join(missing)}, which the "
                f"nvcc in {cpp_extension.CUDA_HOME} cannot compile for (it supports "
                f"{', '.join(sorted(supported, key=float))}): use a CUDA toolkit that does, or "
                "set TORCH_CUDA_ARCH_LIST"
            )
        return ";".join(visible)
    archs = [a for a in PORTABLE_ARCHS if supported is None or a in supported]
    return ";".join(archs[:-1] + [archs[-1] + "+PTX"])


def _cxx_compiler() -> str:
    """The C++ compiler torch.utils.cpp_extension builds with."""
    return os.environ.get("CXX", "c++")


def _links_libstdcxx_statically(cxx: str) -> bool | None:
    """Whether `cxx -shared` makes a library without a dynamic libstdc++ (None: unknown).

    Links a one-function library that throws, and looks for libstdc++.so among the names
    its dynamic section needs.
    """
    with tempfile.TemporaryDirectory() as tmp:
        src, lib = os.path.join(tmp, "probe.cpp"), os.path.join(tmp, "probe.so")
        with open(src, "w") as f:
            f.write('#include <stdexcept>\nvoid probe() { throw std::runtime_error("x"); }\n')
        try:
            subprocess.run(
                [*shlex.split(cxx), "-shared", "-fPIC", src, "-o", lib],
                capture_output=True,
                check=True,
                timeout=120,
            )
            with open(lib, "rb") as f:
                return b"libstdc++.so" not in f.read()
        except (OSError, subprocess.SubprocessError):
            return None


def _warn_static_libstdcxx() -> None:
    if platform.system() != "Linux":
        return
    cxx = _cxx_compiler()
    if _links_libstdcxx_statically(cxx):
        print(
            f"WARNING: the C++ compiler {cxx!r} ({shutil.which(shlex.split(cxx)[0])}) links "
            "libstdc++ statically: any error raised inside an affext op will then crash the "
            "process (segfault) instead of raising an exception. Build with a compiler that "
            "links it dynamically, e.g. CC=/usr/bin/gcc CXX=/usr/bin/g++.",
            file=sys.stderr,
        )


def _openmp_flags() -> list[str]:
    if platform.system() == "Darwin":
        return []
    return ["-fopenmp"]


def extension():
    with_cuda = _want_cuda()
    sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    define_macros = []
    cxx = ["-O3"] + _openmp_flags()
    extra_link = _openmp_flags()
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip():
            os.environ["TORCH_CUDA_ARCH_LIST"] = _default_archs()
        sources += sorted(glob.glob("csrc/**/*.cu", recursive=True))
        define_macros.append(("AFFEXT_WITH_CUDA", None))
        archs = os.environ["TORCH_CUDA_ARCH_LIST"]
        define_macros.append(("AFFEXT_CUDA_ARCHS", f'"{archs}"'))
        ext_cls = cpp_extension.CUDAExtension
        extra = {"cxx": cxx, "nvcc": ["-O3"]}
    else:
        ext_cls = cpp_extension.CppExtension
        extra = {"cxx": cxx}
    import torch

    define_macros.append(("AFFEXT_OPENMP", "1" if _openmp_flags() else "0"))
    define_macros.append(("AFFEXT_TORCH_VERSION", f'"{torch.__version__}"'))
    if with_cuda:
        define_macros.append(("AFFEXT_CUDA_VERSION", f'"{torch.version.cuda}"'))
    return ext_cls(
        name="affext._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=extra_link,
        # the stable ABI only: no libtorch_python, Py_LIMITED_API (0x030a0000, Python 3.10)
        py_limited_api=True,
    )


_warn_static_libstdcxx()
setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)

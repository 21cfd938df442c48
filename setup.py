"""Build of the affext._C extension.

The CPU kernels are always compiled. The CUDA kernels are compiled when torch is a
CUDA build, nvcc is found and a GPU is visible (a CPU-only machine then builds in a minute
instead of four); AFFEXT_CUDA=1 forces them (and fails loudly if that is impossible; CI and
GPU-less build hosts use it), AFFEXT_CUDA=0 leaves them out. TORCH_CUDA_ARCH_LIST is
respected and defaults to "8.0;9.0" (A100 and H100/H200).
"""

import glob
import os
import platform
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0"


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
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
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
        py_limited_api=False,
    )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)

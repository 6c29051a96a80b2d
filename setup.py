"""Builds fastseq and its extension fastseq._C with torch.utils.cpp_extension and ninja.

The C++ CPU sources always; the CUDA sources (csrc/*_cuda.cpp launchers + kernels/*.cu) too when torch
is a CUDA build and nvcc is found. Environment:
    FASTSEQ_BUILD_EXT=0     build no extension: the package serves its reference and Triton paths
    FASTSEQ_BUILD_CUDA=0    build the CPU kernels only, even with CUDA present
    TORCH_CUDA_ARCH_LIST    GPU architectures (default "8.0;9.0a": A100 and H100/H200)
    MAX_JOBS                parallel compile jobs (ninja)
A compiler error fails the install with the compiler's message.
"""
import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _cuda_toolkit(cpp_extension):
    """The CUDA root torch found (CUDA_HOME, else the nvcc on PATH), checked for its headers. An nvcc on
    PATH that is a wrapper script (/usr/local/bin/nvcc) makes torch guess /usr/local; then /usr/local/cuda
    is taken if it holds the toolkit, else the build stops here rather than at the first #include."""
    home = cpp_extension.CUDA_HOME
    has_headers = lambda root: os.path.isfile(os.path.join(root, "include", "cuda_runtime.h"))  # noqa: E731
    if home is None or has_headers(home):
        return home
    fallback = "/usr/local/cuda"
    if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and has_headers(fallback):
        print(f"fastseq: {home} (from the nvcc on PATH) has no include/cuda_runtime.h; using {fallback}")
        cpp_extension.CUDA_HOME = fallback
        return fallback
    raise RuntimeError(f"CUDA_HOME resolves to {home}, which has no include/cuda_runtime.h: set CUDA_HOME to "
                       "the CUDA toolkit's root (e.g. /usr/local/cuda), or FASTSEQ_BUILD_CUDA=0 for CPU kernels only")


def extension_modules():
    if os.environ.get("FASTSEQ_BUILD_EXT", "1") == "0":
        return [], {}
    import torch
    from torch.utils import cpp_extension

    cpu = [s for s in _sources("csrc/*.cpp") if not s.endswith("_cuda.cpp")]
    cxx = ["-O3"]  # the C++ standard is the one torch.utils.cpp_extension sets for this torch
    with_cuda = (
        os.environ.get("FASTSEQ_BUILD_CUDA", "1") != "0"
        and torch.version.cuda is not None
        and _cuda_toolkit(cpp_extension) is not None
    )
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
        ext = cpp_extension.CUDAExtension(
            "fastseq._C",
            cpu + _sources("csrc/*_cuda.cpp") + _sources("kernels/*.cu"),
            define_macros=[("FASTSEQ_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]},
        )
    else:
        ext = cpp_extension.CppExtension("fastseq._C", cpu, extra_compile_args={"cxx": cxx})
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=True)
    return [ext], {"build_ext": build_ext}


ext_modules, cmdclass = extension_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)

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
        and cpp_extension.CUDA_HOME is not None
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

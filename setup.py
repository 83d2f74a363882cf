"""Builds custom_conv._C: the C++ (and, where possible, CUDA) kernels.

CUDA sources (csrc/cuda/*.cu) are compiled when a GPU is visible or when
FORCE_CUDA=1 is set, as CI does to compile-check them on a machine without a
GPU. The build says which it chose.
"""
import glob
import os
import sys

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
# Ampere, Ada and Hopper, plus PTX so that newer GPUs can JIT the kernels.
DEFAULT_CUDA_ARCHS = "8.0;8.6;8.9;9.0+PTX"


def build_cuda():
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def extension():
    # Shared code in csrc/, the CPU kernels in csrc/cpu/ (the direct vector
    # kernels in csrc/cpu/direct/), the CUDA kernels in csrc/cuda/.
    cpp_sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    # The C++ standard is left to torch.utils.cpp_extension, which matches the
    # torch being built against (C++17 for older releases, C++20 for newer).
    # OpenMP is how at::parallel_for spreads work over cores in torch's CPU
    # builds; without -fopenmp the loops in our kernels would run on one core.
    cxx_flags = ["-O3", "-fopenmp"]
    if build_cuda() and cuda_sources:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        print(f"custom_conv: building CPU and CUDA kernels "
              f"(CUDA_HOME={CUDA_HOME}, archs {os.environ['TORCH_CUDA_ARCH_LIST']})", file=sys.stderr)
        return CUDAExtension(
            "custom_conv._C",
            cpp_sources + cuda_sources,
            extra_compile_args={"cxx": cxx_flags + ["-DCUSTOM_CONV_WITH_CUDA"],
                                "nvcc": ["-O3", "-DCUSTOM_CONV_WITH_CUDA"]},
            extra_link_args=["-fopenmp"],
            py_limited_api=False,
        )
    print("custom_conv: building CPU kernels only "
          "(no GPU visible and FORCE_CUDA is not 1)", file=sys.stderr)
    return CppExtension("custom_conv._C", cpp_sources,
                        extra_compile_args={"cxx": cxx_flags},
                        extra_link_args=["-fopenmp"])


setup(
    name="custom_conv",
    packages=find_packages(include=["custom_conv", "custom_conv.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
)

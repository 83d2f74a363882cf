"""Builds custom_conv._C: the C++ (and, where possible, CUDA) kernels.

CUDA sources (csrc/cuda/*.cu) are compiled when a GPU is visible or when
FORCE_CUDA=1 is set, as CI does to compile-check them on a machine without a
GPU. The build says which it chose.

Beside the compiled module the build writes custom_conv/_build_info.py: the
package version and the torch it was compiled against, which `import
custom_conv` checks before it loads the module (see custom_conv/_ops.py).
Build without isolation, against the torch that will run it:
`pip install --no-build-isolation -e .` or `pip wheel --no-build-isolation --no-deps .`.
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


# CUSTOM_CONV_SANITIZE=1 builds the CPU kernels with AddressSanitizer and
# UndefinedBehaviorSanitizer (for `make sanitize`, into its own build folder).
SANITIZE = os.environ.get("CUSTOM_CONV_SANITIZE", "0") == "1"
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g"]


def build_cuda():
    if SANITIZE:
        return False
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
    # Every function starts on a cache line, so that a hot loop's alignment
    # is its own function's and not the sum of everything linked before it:
    # without it, a change to conv2d_direct.cpp moved the GEMM linked after it
    # and made an untouched im2col input gradient 15% slower.
    cxx_flags = ["-O3", "-fopenmp", "-falign-functions=64"]
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
    if SANITIZE:
        print("custom_conv: building CPU kernels with AddressSanitizer and UBSan", file=sys.stderr)
        return CppExtension("custom_conv._C", cpp_sources,
                            extra_compile_args={"cxx": ["-O1", "-fopenmp"] + SANITIZE_FLAGS},
                            extra_link_args=["-fopenmp"] + SANITIZE_FLAGS)
    print("custom_conv: building CPU kernels only "
          "(no GPU visible and FORCE_CUDA is not 1)", file=sys.stderr)
    return CppExtension("custom_conv._C", cpp_sources,
                        extra_compile_args={"cxx": cxx_flags},
                        extra_link_args=["-fopenmp"])


BUILD_INFO = '''"""Written by setup.py when it built custom_conv._C (not kept in git).

custom_conv/_ops.py compares TORCH_VERSION and TORCH_GIT_VERSION with the
torch being imported before it loads the compiled module: a C++ extension
only runs with the torch it was compiled against.
"""
VERSION = {version!r}
TORCH_VERSION = {torch_version!r}
TORCH_GIT_VERSION = {torch_git_version!r}
TORCH_CUDA_VERSION = {torch_cuda_version!r}  # the CUDA of that torch build (None for a CPU-only torch)
WITH_CUDA = {with_cuda!r}  # whether csrc/cuda/ was compiled in
CUDA_ARCHS = {cuda_archs!r}
'''


class BuildExt(BuildExtension):
    """torch's BuildExtension, plus two things: it writes _build_info.py next
    to the compiled module, and an editable install (`pip install -e .`, which
    builds in a fresh temporary folder) compiles in the same build/temp.*
    folder as `setup.py build_ext --inplace`, so ninja reuses its objects."""

    def finalize_options(self):
        super().finalize_options()
        if getattr(self, "editable_mode", False):
            self.build_temp = os.path.join(ROOT, "build", f"temp.{self.plat_name}-{sys.implementation.cache_tag}")

    def run(self):
        super().run()  # with --inplace (or editable) the module now sits in custom_conv/
        with_cuda = any(source.endswith(".cu") for ext in self.extensions for source in ext.sources)
        text = BUILD_INFO.format(
            version=self.distribution.get_version(), torch_version=str(torch.__version__),
            torch_git_version=torch.version.git_version, torch_cuda_version=torch.version.cuda,
            with_cuda=with_cuda, cuda_archs=os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None)
        for ext in self.extensions:
            path = os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), "_build_info.py")
            if not (os.path.exists(path) and open(path).read() == text):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(text)


setup(
    name="custom_conv",
    packages=find_packages(include=["custom_conv", "custom_conv.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExt},
)

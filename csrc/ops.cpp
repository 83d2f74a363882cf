// The custom_conv operator library: every schema, declared once (the twelve
// kernel ops' in schemas.h). Kernels are attached per backend next to their
// code (cpu/conv2d.cpp, cpu/max_pool2d.cpp, cpu/avg_pool2d.cpp and
// cuda/*.cu; meta.cpp for the Meta kernels that torch.compile traces with),
// autocast in autocast.cpp;
// autograd, torch.func and vmap in Python (custom_conv/autograd.py), and
// the reverse mode of conv2d and max_pool2d for training also in C++
// (autograd.cpp).
#include <Python.h>
#include <torch/library.h>

#include "conv2d_algorithm.h"
#include "cpu/conv2d_routes.h"
#include "cpu/direct/kernels.h"
#include "cpu/gemm/gemm.h"
#include "cpu/isa.h"
#include "cpu/scratch.h"
#include "schemas.h"

// `import custom_conv._C` loads this shared library, which runs the
// registrations below; the module itself has no Python attributes.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(custom_conv, m) {
  custom_conv::define_kernel_ops(m);
  // conv2d_forward with its reverse-mode derivative in C++ (autograd.cpp),
  // which custom_conv/autograd.py calls where no other derivative is needed.
  m.def("conv2d_reverse_mode(Tensor input, Tensor weight, Tensor? bias, int[2] stride, "
        "int[2] padding, int[2] dilation, int groups) -> Tensor");
  // max_pool2d_forward with its reverse-mode derivative in C++, likewise.
  m.def("max_pool2d_reverse_mode(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
        "int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)");
  // The instruction-set level every vectorised CPU route of this process
  // uses: "avx512", "avx2" or "baseline" (cpu/isa.h).
  m.def("cpu_kernels() -> str", &custom_conv::cpu_kernels);
  // Whether this CPU runs 512-bit instructions in two 256-bit halves (AMD
  // Zen 4), which the chooser weighs (cpu/isa.h); for tests and benchmarks.
  m.def("cpu_avx512_half_rate() -> bool", &custom_conv::cpu_avx512_half_rate);
  // The float32 FMA peak of this CPU in GFLOP/s, measured for about `seconds`
  // on torch's threads with those kernels' widest registers (for
  // benchmarks/bench.py; 0 without direct kernels).
  m.def("cpu_fma_peak_gflops(float seconds) -> float", &custom_conv::direct::cpu_fma_peak_gflops);
  // Which algorithm (winograd, direct, depthwise, im2col) conv2d_forward's given pass
  // ("forward", "backward_input", "backward_weight") runs on these tensors,
  // and why: the choice of conv2d_algorithm.cpp.
  m.def("conv2d_algorithm(Tensor input, Tensor weight, int[2] stride, int[2] padding, int[2] dilation, "
        "int groups, str pass_name) -> (str, str)",
        &custom_conv::conv2d_algorithm_op);
  // Every algorithm's name, in the order the CPU chooser tries them.
  m.def("conv2d_algorithms() -> str[]", &custom_conv::conv2d_algorithms);
  // Switches algorithms off (custom_conv.disabled_algorithms); returns the
  // ones off before.
  m.def("set_disabled_conv2d_algorithms(str[] names) -> str[]", &custom_conv::set_disabled_conv2d_algorithms);
  // Makes every CPU convolution pass run on the algorithm named, wherever
  // that route can compute it ("" for the chooser's own choice again;
  // custom_conv.forced_algorithm); returns the one forced before.
  m.def("set_forced_conv2d_algorithm(str name) -> str", &custom_conv::set_forced_conv2d_algorithm);
  // The constants that cut each CPU route's work into blocks, by name (a
  // table of blockings repeats its names): what the tests' sweep derives
  // its shapes from, so that it crosses every blocking's edges.
  m.def("cpu_route_constants() -> (str[], int[])", &custom_conv::cpu_route_constants);
  // Our CPU GEMM alone (cpu/gemm/gemm.h): alpha * a @ b + beta * c + bias per
  // row, for 2-D matrices or 3-D batches of any strides; and its blocking
  // for a dtype: (mr, nr, kc, nc, L1 bytes, L2 bytes). For its tests and the
  // benchmark; the routes call the GEMM directly.
  m.def("cpu_gemm(Tensor a, Tensor b, Tensor? c=None, float alpha=1, float beta=0, Tensor? bias=None) -> Tensor",
        &custom_conv::gemm::gemm_op);
  m.def("cpu_gemm_blocking(ScalarType dtype) -> int[]", &custom_conv::gemm::blocking_for);
  // The CPU routes' scratch pool (cpu/scratch.h): (bytes kept free, bytes in
  // use, most in use at once since the last call, buffers allocated so far),
  // and a call that frees what it keeps, returning the bytes freed.
  m.def("cpu_scratch_stats() -> int[]", &custom_conv::scratch_stats);
  m.def("release_cpu_scratch() -> int", &custom_conv::release_scratch);
}

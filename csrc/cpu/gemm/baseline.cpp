// The GEMM's micro-kernels for any CPU: 16-byte vectors (SSE2 on x86-64, 16
// registers), tiles of 4 rows by 2 registers: 4 x 8 floats or 4 x 4 doubles.
// The baseline level, and every build that cannot compile the others.
#include "kernels.h"

#include "../vectors_baseline.h"
#include "micro_kernel.h"

namespace custom_conv {
namespace gemm {
namespace {
constexpr MicroKernels<float> kFloat = micro::table<vectors::Baseline<float>, 4, 2>();
constexpr MicroKernels<double> kDouble = micro::table<vectors::Baseline<double>, 4, 2>();
}  // namespace

const MicroKernels<float>* baseline_float_kernels() { return &kFloat; }
const MicroKernels<double>* baseline_double_kernels() { return &kDouble; }

}  // namespace gemm
}  // namespace custom_conv

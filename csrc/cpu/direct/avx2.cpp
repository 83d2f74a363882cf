// The direct convolution kernels (loops.h) compiled for AVX2 and FMA: 8
// floats or 4 doubles per register, 16 registers. Only select.cpp hands them
// out, after checking that the CPU has AVX2 and FMA.
#include "kernels.h"  // first: its inline functions must stay generic x86-64

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma")

#include "../vectors_avx2.h"
#include "loops.h"

namespace custom_conv {
namespace direct {
namespace {

using namespace vectors;

// The blockings, one row each (see avx512.cpp): forward tiles of 12 outputs
// x 1 register or 6 x 2 (12 accumulators), weight-gradient tiles of r input
// channels x 1 or 2 registers.
constexpr ForwardBlocking<float> kFloatForward[] = {
    {8, 12, 1, &loops::forward_tiles<Avx2Float, 12, 1>},
    {16, 6, 2, &loops::forward_tiles<Avx2Float, 6, 2>},
};
// With the outputs along the lanes (runs of 8): 4 channels x 3 runs or 6 x
// 2, 12 accumulators.
constexpr ForwardBlocking<float> kFloatRuns[] = {
    {4, 24, 3, &loops::forward_runs<Avx2Float, 4, 3>, 8},
    {6, 16, 2, &loops::forward_runs<Avx2Float, 6, 2>, 8},
};
constexpr WeightGradBlocking<float> kFloatWeightGrad[] = {
    {8, 4, &loops::weight_grad_tiles<Avx2Float, 4, 1>},
    {8, 8, &loops::weight_grad_tiles<Avx2Float, 8, 1>},
    {16, 4, &loops::weight_grad_tiles<Avx2Float, 4, 2>},
};
// The weight gradient along the pixels: 4 output channels x 3 steps.
constexpr WeightGradRunsBlocking<float> kFloatWeightGradRuns{4, 3, 8, &loops::weight_grad_runs<Avx2Float, 4, 3>};
constexpr WeightGradRunsBlocking<double> kDoubleWeightGradRuns{4, 3, 4, &loops::weight_grad_runs<Avx2Double, 4, 3>};
constexpr ForwardBlocking<double> kDoubleForward[] = {
    {4, 12, 1, &loops::forward_tiles<Avx2Double, 12, 1>},
    {8, 6, 2, &loops::forward_tiles<Avx2Double, 6, 2>},
};
constexpr ForwardBlocking<double> kDoubleRuns[] = {
    {4, 12, 3, &loops::forward_runs<Avx2Double, 4, 3>, 4},
    {6, 8, 2, &loops::forward_runs<Avx2Double, 6, 2>, 4},
};
constexpr WeightGradBlocking<double> kDoubleWeightGrad[] = {
    {4, 4, &loops::weight_grad_tiles<Avx2Double, 4, 1>},
    {4, 8, &loops::weight_grad_tiles<Avx2Double, 8, 1>},
    {8, 4, &loops::weight_grad_tiles<Avx2Double, 4, 2>},
};

// Built at compile time (constexpr): no code of this file runs, not even at
// load time, until a caller has checked the CPU.
constexpr Kernels<float> kFloat{"avx2", kFloatForward, 2, kFloatWeightGrad, 3,
                                 &loops::fma_peak_loop<Avx2Float>, kFloatRuns, 2, &kFloatWeightGradRuns};
constexpr Kernels<double> kDouble{"avx2", kDoubleForward, 2, kDoubleWeightGrad, 3,
                                  &loops::fma_peak_loop<Avx2Double>, kDoubleRuns, 2, &kDoubleWeightGradRuns};

}  // namespace
}  // namespace direct
}  // namespace custom_conv

#pragma GCC pop_options

namespace custom_conv {
namespace direct {
const Kernels<float>* avx2_float_kernels() { return &kFloat; }
const Kernels<double>* avx2_double_kernels() { return &kDouble; }
}  // namespace direct
}  // namespace custom_conv

#else

namespace custom_conv {
namespace direct {
const Kernels<float>* avx2_float_kernels() { return nullptr; }
const Kernels<double>* avx2_double_kernels() { return nullptr; }
}  // namespace direct
}  // namespace custom_conv

#endif

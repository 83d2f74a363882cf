// The direct convolution kernels (loops.h) compiled for AVX-512: 16 floats
// or 8 doubles per register, 32 registers. Only select.cpp hands them out,
// after checking that the CPU has AVX-512.
#include "kernels.h"  // first: its inline functions must stay generic x86-64

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512vl")

#include "../vectors_avx512.h"
#include "loops.h"

namespace custom_conv {
namespace direct {
namespace {

using namespace vectors;


// The blockings, one row each: output channels per block (nb), outputs per
// forward tile, and the kernel instantiated for them. Forward tiles of 16
// outputs x 1 register or 8 x 2 give 16 accumulators, enough to keep both FMA
// units busy, and 8 and 16 divide most layers' output rows, so row-aligned
// tiles compute no padding. The 8-float block runs on the lower halves of
// the registers (AVX-512VL), so layers with few output channels (LeNet's 6)
// do not waste three quarters of each. Weight-gradient tiles hold r input
// channels x 1 or 2 registers.
constexpr ForwardBlocking<float> kFloatForward[] = {
    {8, 16, 1, &loops::forward_tiles<Avx512Float8, 16, 1>},
    {16, 16, 1, &loops::forward_tiles<Avx512Float, 16, 1>},
    {32, 8, 2, &loops::forward_tiles<Avx512Float, 8, 2>},
};
constexpr WeightGradBlocking<float> kFloatWeightGrad[] = {
    {8, 4, &loops::weight_grad_tiles<Avx512Float8, 4, 1>},
    {8, 8, &loops::weight_grad_tiles<Avx512Float8, 8, 1>},
    {8, 16, &loops::weight_grad_tiles<Avx512Float8, 16, 1>},
    {16, 4, &loops::weight_grad_tiles<Avx512Float, 4, 1>},
    {16, 8, &loops::weight_grad_tiles<Avx512Float, 8, 1>},
    {16, 16, &loops::weight_grad_tiles<Avx512Float, 16, 1>},
    {32, 4, &loops::weight_grad_tiles<Avx512Float, 4, 2>},
    {32, 8, &loops::weight_grad_tiles<Avx512Float, 8, 2>},
};
// With the outputs along the lanes (runs of 16): 6 channels x 4 runs or 8
// x 3, 24 accumulators and a register per run's inputs.
constexpr ForwardBlocking<float> kFloatRuns[] = {
    {6, 64, 4, &loops::forward_runs<Avx512Float, 6, 4>, 16},
    {8, 48, 3, &loops::forward_runs<Avx512Float, 8, 3>, 16},
};
// The weight gradient along the pixels: 8 output channels x 3 steps, 24
// accumulators and the 3 steps' input vectors.
constexpr WeightGradRunsBlocking<float> kFloatWeightGradRuns{8, 3, 16, &loops::weight_grad_runs<Avx512Float, 8, 3>};
constexpr WeightGradRunsBlocking<double> kDoubleWeightGradRuns{8, 3, 8, &loops::weight_grad_runs<Avx512Double, 8, 3>};
constexpr ForwardBlocking<double> kDoubleForward[] = {
    {8, 16, 1, &loops::forward_tiles<Avx512Double, 16, 1>},
    {16, 8, 2, &loops::forward_tiles<Avx512Double, 8, 2>},
};
constexpr ForwardBlocking<double> kDoubleRuns[] = {
    {6, 32, 4, &loops::forward_runs<Avx512Double, 6, 4>, 8},
    {8, 24, 3, &loops::forward_runs<Avx512Double, 8, 3>, 8},
};
constexpr WeightGradBlocking<double> kDoubleWeightGrad[] = {
    {8, 4, &loops::weight_grad_tiles<Avx512Double, 4, 1>},
    {8, 8, &loops::weight_grad_tiles<Avx512Double, 8, 1>},
    {8, 16, &loops::weight_grad_tiles<Avx512Double, 16, 1>},
    {16, 4, &loops::weight_grad_tiles<Avx512Double, 4, 2>},
    {16, 8, &loops::weight_grad_tiles<Avx512Double, 8, 2>},
};

// Built at compile time (constexpr): no code of this file runs, not even at
// load time, until a caller has checked the CPU.
constexpr Kernels<float> kFloat{"avx512", kFloatForward, 3, kFloatWeightGrad, 8,
                                 &loops::fma_peak_loop<Avx512Float>, kFloatRuns, 2, &kFloatWeightGradRuns};
constexpr Kernels<double> kDouble{"avx512", kDoubleForward, 2, kDoubleWeightGrad, 5,
                                  &loops::fma_peak_loop<Avx512Double>, kDoubleRuns, 2, &kDoubleWeightGradRuns};

}  // namespace
}  // namespace direct
}  // namespace custom_conv

#pragma GCC pop_options

namespace custom_conv {
namespace direct {
const Kernels<float>* avx512_float_kernels() { return &kFloat; }
const Kernels<double>* avx512_double_kernels() { return &kDouble; }
}  // namespace direct
}  // namespace custom_conv

#else

namespace custom_conv {
namespace direct {
const Kernels<float>* avx512_float_kernels() { return nullptr; }
const Kernels<double>* avx512_double_kernels() { return nullptr; }
}  // namespace direct
}  // namespace custom_conv

#endif

// Our own matrix product for the CPU routes: every product of the im2col,
// Winograd and 1x1 paths runs here, none in BLAS.
//
//   C[z] = alpha * A[z] @ B[z] + beta * C[z] (+ bias[z][i] on row i)
//
// for z < batch, A (m x k), B (k x n), C (m x n), each a strided view
// (element (i, j) at data[i * rs + j * cs]), so a transposed operand is read
// in place. float and double compute in their own type; half and bfloat16
// are converted to float while packing, summed in float and rounded once
// when C is written.
//
// How (gemm.cpp): the classic blocking of Goto and van de Geijn, as BLIS
// does it. The reduction is cut into slices of kc steps; per slice, a block
// of B (kc x nc, sized to stay in the core's L2) and a block of A are packed
// into contiguous micro-panels, and the micro-kernel (micro_kernel.h) runs
// each tile of C with an A micro-panel held in L1. kc and nc come from the
// CPU's cache sizes at run time; the micro-kernel's tile from its
// instruction set (../isa.h). Threads take blocks of C (and batch entries);
// inside a parallel region (a route's own threads) the product runs on the
// calling thread. Every element is summed in the same order whatever the
// thread count, so results are bitwise reproducible.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace custom_conv {
namespace gemm {

template <typename T>
struct Operand {
  const T* data = nullptr;
  int64_t rs = 0, cs = 0, batch_stride = 0;
};

// T: float, double, c10::Half or c10::BFloat16; Acc: T's accumulation type.
template <typename T, typename Acc>
struct Problem {
  int64_t batch = 1, m = 0, n = 0, k = 0;
  Operand<T> a, b;
  T* c = nullptr;
  int64_t rs_c = 0, cs_c = 1, batch_stride_c = 0;
  const T* bias = nullptr;  // optional, per row of C
  int64_t batch_stride_bias = 0;
  // Set by run() where it computes C^T = B^T A^T instead: the bias is then
  // per column of the C it computes.
  bool transposed = false;
  Acc alpha = Acc(1), beta = Acc(0);  // with beta == 0, C is not read
};

template <typename T, typename Acc>
void run(const Problem<T, Acc>& p);

// The tensor form: c = alpha * a @ b + beta * c (+ bias per row of c), for
// 2-D tensors or 3-D batches, of any strides, all of one floating dtype, on
// the CPU. c is written in place (its strides kept). The routes call this.
void matmul(const at::Tensor& c, const at::Tensor& a, const at::Tensor& b, double beta = 0.0,
            const at::Tensor& bias = {}, double alpha = 1.0);

// The op custom_conv::cpu_gemm: alpha * a @ b + beta * c + bias (per row)
// on new memory (c's strides where c is given), for 2-D tensors or 3-D
// batches on the CPU: the GEMM alone, for its tests and the benchmark.
at::Tensor gemm_op(const at::Tensor& a, const at::Tensor& b, const c10::optional<at::Tensor>& c, double alpha,
                   double beta, const c10::optional<at::Tensor>& bias);

// The op custom_conv::cpu_gemm_blocking: the micro-kernel's tile (mr, nr)
// and the blocking (kc, nc) for this dtype at the CPU's level, and the cache
// sizes they were derived from (L1, L2 bytes): what the tests sweep
// across and the benchmark reports.
std::vector<int64_t> blocking_for(at::ScalarType dtype);

}  // namespace gemm
}  // namespace custom_conv

// Deliberately broken copies of csrc/cuda/gemm.cuh, each with one plausible
// bug, which the emulator must catch (tests/test_cuda_emulator.py writes the
// copies, gemm_<mutant>.cuh, into the build folder). Each copy is compiled in
// a namespace of its own, custom_conv::<mutant>, which sees custom_conv::gpu
// (common.cuh, tensor_core.cuh: included first, so that the copies' includes
// of them are skipped) through a using-directive.
#include "../../csrc/cuda/common.cuh"
#include "../../csrc/cuda/tensor_core.cuh"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

// The names of test_cuda_emulator.py's MUTANTS.
#define CUSTOM_CONV_MUTANTS(X)                                                                    \
  X(core_stage_reused_early) X(store_off_by_one) X(load_off_by_one) X(shared_tile_too_small) X(mma_fragment_row) \
  X(mma_missing_wait) X(mma_stage_reused_early) X(mma_fill_next_stage) X(mma_no_dynamic_shared)

#define CUSTOM_CONV_DECLARE(mutant) \
  namespace custom_conv {           \
  namespace mutant {                \
  using namespace gpu;              \
  }                                 \
  }
CUSTOM_CONV_MUTANTS(CUSTOM_CONV_DECLARE)

#define gpu core_stage_reused_early
#include "gemm_core_stage_reused_early.cuh"
#undef gpu
#define gpu store_off_by_one
#include "gemm_store_off_by_one.cuh"
#undef gpu
#define gpu load_off_by_one
#include "gemm_load_off_by_one.cuh"
#undef gpu
#define gpu shared_tile_too_small
#include "gemm_shared_tile_too_small.cuh"
#undef gpu
#define gpu mma_fragment_row
#include "gemm_mma_fragment_row.cuh"
#undef gpu
#define gpu mma_missing_wait
#include "gemm_mma_missing_wait.cuh"
#undef gpu
#define gpu mma_stage_reused_early
#include "gemm_mma_stage_reused_early.cuh"
#undef gpu
#define gpu mma_fill_next_stage
#include "gemm_mma_fill_next_stage.cuh"
#undef gpu
#define gpu mma_no_dynamic_shared
#include "gemm_mma_no_dynamic_shared.cuh"
#undef gpu

namespace {

// C (m, n) = A (m, k) @ B (k, n), float (the CUDA-core kernel) or half (the
// tensor-core kernel), through one of the broken GEMMs.
template <typename scalar_t, template <typename, typename> class Params>
void fill(Params<scalar_t, scalar_t>& p, const at::Tensor& a, const at::Tensor& b, at::Tensor& c) {
  p.m = a.size(0);
  p.k = a.size(1);
  p.n = b.size(1);
  p.a = a.const_data_ptr<scalar_t>();
  p.lda = p.k;
  p.b = b.const_data_ptr<scalar_t>();
  p.ldb = p.n;
  p.c = c.mutable_data_ptr<scalar_t>();
  p.ldc = p.n;
}

at::Tensor mutant_gemm(const std::string& mutant, const at::Tensor& a_, const at::Tensor& b_) {
  const at::Tensor a = a_.contiguous(), b = b_.contiguous();
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0) && a.scalar_type() == b.scalar_type() &&
              (a.scalar_type() == at::kFloat || a.scalar_type() == at::kHalf),
              "mutant_gemm: float or half matrices (m, k) and (k, n)");
  at::Tensor c = at::empty({a.size(0), b.size(1)}, a.options());
#define CUSTOM_CONV_RUN(name)                                  \
  if (mutant == #name) {                                       \
    if (a.scalar_type() == at::kHalf) {                        \
      custom_conv::name::GemmParams<at::Half, at::Half> p;     \
      fill(p, a, b, c);                                        \
      p.tensor_cores = true;                                   \
      custom_conv::name::gemm(p);                              \
    } else {                                                   \
      custom_conv::name::GemmParams<float, float> p;           \
      fill(p, a, b, c);                                        \
      custom_conv::name::gemm(p);                              \
    }                                                          \
    return c;                                                  \
  }
  CUSTOM_CONV_MUTANTS(CUSTOM_CONV_RUN)
#undef CUSTOM_CONV_RUN
  TORCH_CHECK(false, "no mutant called ", mutant);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(custom_conv_emulated, m) {
  m.def("mutant_gemm(str mutant, Tensor a, Tensor b) -> Tensor", &mutant_gemm);
}

// csrc/cuda/conv2d.cu, compiled for the CPU against cuda_emulator.h.
#include "../../csrc/cuda/conv2d.cu"

namespace custom_conv {
namespace {
bool emulated_tensor_cores = true;
}  // namespace

// The chooser's answer (conv2d_algorithm.cpp, which this build leaves out,
// reads custom_conv.disabled_algorithms): here, set by set_tensor_cores.
bool cuda_gemm_uses_tensor_cores(at::ScalarType dtype) {
  return (dtype == at::kHalf || dtype == at::kBFloat16) && emulated_tensor_cores;
}
}  // namespace custom_conv

// Whether half and bfloat16 products run on the (emulated) tensor cores from
// now on; returns the previous setting.
bool set_tensor_cores(bool on) {
  const bool previous = custom_conv::emulated_tensor_cores;
  custom_conv::emulated_tensor_cores = on;
  return previous;
}

// The plan gemm() makes for a product of this size under the current limits:
// (tiles_m, tiles_n, splits, k_per_split, batches_per_launch). The sweep in
// test_cuda_emulator.py searches it for shapes whose products leave a
// remainder in every split (a short last slice, a short last launch).
std::vector<int64_t> gemm_plan(int64_t batch, int64_t m, int64_t n, int64_t k) {
  using namespace custom_conv::gpu;
  const GemmPlan p = plan_gemm(batch, m, n, k, launch_limits());
  return {p.tiles_m, p.tiles_n, p.splits, p.k_per_split, p.batches_per_launch};
}

// C = A @ B through gemm(), for 2-D A (m, k) and B (k, n) of one dtype, each
// with either dimension contiguous (the other is its leading dimension).
at::Tensor gemm_op(const at::Tensor& a, const at::Tensor& b) {
  using namespace custom_conv::gpu;
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0) && a.scalar_type() == b.scalar_type(),
              "gemm: matrices (m, k) and (k, n) of one dtype");
  const auto layout = [](const at::Tensor& x, bool& trans, int64_t& ld) {
    trans = x.stride(1) != 1;
    TORCH_CHECK(!trans || x.stride(0) == 1, "gemm: one dimension of each operand must be contiguous");
    ld = trans ? x.stride(1) : x.stride(0);
  };
  at::Tensor c = at::empty({a.size(0), b.size(1)}, a.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "gemm", [&] {
    GemmParams<scalar_t> p;
    p.m = a.size(0);
    p.k = a.size(1);
    p.n = b.size(1);
    p.a = a.const_data_ptr<scalar_t>();
    layout(a, p.trans_a, p.lda);
    p.b = b.const_data_ptr<scalar_t>();
    layout(b, p.trans_b, p.ldb);
    p.c = c.mutable_data_ptr<scalar_t>();
    p.ldc = p.n;
    gemm(p);
  });
  return c;
}

TORCH_LIBRARY_FRAGMENT(custom_conv_emulated, m) {
  m.def("gemm_plan(int batch, int m, int n, int k) -> int[]", &gemm_plan);
  m.def("gemm(Tensor a, Tensor b) -> Tensor", &gemm_op);
  m.def("set_tensor_cores(bool on) -> bool", &set_tensor_cores);
}

// csrc/cuda/conv2d.cu, compiled for the CPU against cuda_emulator.h (its
// kernels per dtype in conv2d_kernels_<dtype>.cpp), and ops that reach into
// the GEMM and the divisions for tests of their own.
#include "../../csrc/cuda/conv2d.cu"
#include "../../csrc/cuda/divisor.cuh"
#include "../../csrc/cuda/gemm.cuh"

// Switches an algorithm ("depthwise"), the tensor cores or the implicit GEMM
// off, or back on,
// as custom_conv.disabled_algorithms does in the real extension (the same
// switches: conv2d_algorithm_cuda.cpp is compiled into this one too).
// Returns whether it was off.
bool set_switched_off_op(const std::string& name, bool off) {
  using namespace custom_conv;
  Switches s = switched_off();
  bool was;
  if (name == kTensorCores) {
    was = s.tensor_cores;
    s.tensor_cores = off;
  } else if (name == kImplicitGemm) {
    was = s.implicit_gemm;
    s.implicit_gemm = off;
  } else if (name == kChannelsLastGather) {
    was = s.channels_last_gather;
    s.channels_last_gather = off;
  } else {
    TORCH_CHECK(name == "depthwise",
                "set_switched_off: 'depthwise', 'tensor_cores', 'implicit_gemm' or 'channels_last_gather'");
    const unsigned bit = 1u << static_cast<unsigned>(Conv2dAlgorithm::kDepthwise);
    was = (s.algorithms & bit) != 0;
    s.algorithms = off ? (s.algorithms | bit) : (s.algorithms & ~bit);
  }
  set_switched_off(s);
  return was;
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
// with either dimension contiguous (the other is its leading dimension); on
// the tensor cores or not.
at::Tensor gemm_op(const at::Tensor& a, const at::Tensor& b, bool tensor_cores) {
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
    p.tensor_cores = tensor_cores;
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

// n / d and n % d of each value of n (int32, 0 <= n < 2^31) by a Divisor.
std::vector<at::Tensor> divide_op(const at::Tensor& n_, int64_t d) {
  TORCH_CHECK(n_.scalar_type() == at::kInt, "divide: int32 numerators");
  const at::Tensor n = n_.contiguous();
  at::Tensor q = at::empty_like(n), r = at::empty_like(n);
  const custom_conv::gpu::Divisor divisor(d);
  const int32_t* in = n.const_data_ptr<int32_t>();
  int32_t* qs = q.mutable_data_ptr<int32_t>();
  int32_t* rs = r.mutable_data_ptr<int32_t>();
  for (int64_t i = 0; i < n.numel(); ++i) {
    qs[i] = divisor.div(in[i]);
    rs[i] = divisor.mod(in[i], qs[i]);
  }
  return {q, r};
}

TORCH_LIBRARY_FRAGMENT(custom_conv_emulated, m) {
  m.def("divide(Tensor n, int d) -> Tensor[]", &divide_op);
  m.def("gemm_plan(int batch, int m, int n, int k) -> int[]", &gemm_plan);
  m.def("gemm(Tensor a, Tensor b, bool tensor_cores) -> Tensor", &gemm_op);
  m.def("set_switched_off(str name, bool off) -> bool", &set_switched_off_op);
}

// csrc/cuda/conv2d.cu, compiled for the CPU against cuda_emulator.h.
#include "../../csrc/cuda/conv2d.cu"

// The plan gemm() makes for a product of this size under the current limits:
// (tiles_m, tiles_n, splits, k_per_split, batches_per_launch). The sweep in
// test_cuda_emulator.py searches it for shapes whose products leave a
// remainder in every split (a short last slice, a short last launch).
std::vector<int64_t> gemm_plan(int64_t batch, int64_t m, int64_t n, int64_t k) {
  using namespace custom_conv::gpu;
  const GemmPlan p = plan_gemm(batch, m, n, k, launch_limits());
  return {p.tiles_m, p.tiles_n, p.splits, p.k_per_split, p.batches_per_launch};
}

TORCH_LIBRARY_FRAGMENT(custom_conv_emulated, m) {
  m.def("gemm_plan(int batch, int m, int n, int k) -> int[]", &gemm_plan);
}

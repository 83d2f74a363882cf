// Small kernels that exercise the emulator's warps (test_cuda_emulator.py):
// the shuffles, against a model of CUDA's rules written in Python, and
// kernels with one warp-level bug each, which the emulator must report.
#include "../../csrc/cuda/common.cuh"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

namespace custom_conv {
namespace gpu {
namespace {

// out[i] = the value thread i receives from __shfl*_sync(mask, x[i], operand,
// width); threads outside the mask keep x[i].
__global__ void shuffle_kernel(gpu_ptr<const int> x, gpu_ptr<int> out, int mode, unsigned mask, int operand,
                               int width) {
  const int i = threadIdx.x;
  int v = x[i];
  if (mask >> (i % 32) & 1u) {
    switch (mode) {
      case 0: v = __shfl_sync(mask, v, operand, width); break;
      case 1: v = __shfl_up_sync(mask, v, static_cast<unsigned>(operand), width); break;
      case 2: v = __shfl_down_sync(mask, v, static_cast<unsigned>(operand), width); break;
      default: v = __shfl_xor_sync(mask, v, operand, width); break;
    }
  }
  out[i] = v;
}

at::Tensor warp_shuffle(const at::Tensor& x, const std::string& mode, int64_t mask, int64_t operand, int64_t width) {
  TORCH_CHECK(x.dim() == 1 && x.scalar_type() == at::kInt && x.is_contiguous(), "int32 vector");
  const int m = mode == "index" ? 0 : mode == "up" ? 1 : mode == "down" ? 2 : 3;
  at::Tensor out = at::empty_like(x);
  CUSTOM_CONV_LAUNCH(1, static_cast<unsigned>(x.numel()), shuffle_kernel)(
      x.const_data_ptr<int>(), out.mutable_data_ptr<int>(), m, static_cast<unsigned>(mask),
      static_cast<int>(operand), static_cast<int>(width));
  return out;
}

// Each `bug` is a kernel of one warp (64 threads for "barrier") that the
// emulator must report; "syncwarp" is the correct version of "no_syncwarp",
// "address_inside" of "address_before" and "address_after".
__global__ void warp_bug_kernel(int bug, gpu_ptr<int> out) {
  __shared__ shared_array<int, 32> cell;
  const int lane = threadIdx.x % 32;
  int v = lane;
  switch (bug) {
    case 0:  // "exited": half the warp returns before a full-warp shuffle
      if (lane >= 16) return;
      v = __shfl_xor_sync(0xffffffffu, v, 1);
      break;
    case 1:  // "barrier": lanes of a warp at __syncthreads, the rest at __syncwarp
      if (lane < 16) {
        __syncthreads();
      } else {
        __syncwarp();
      }
      break;
    case 2:  // "mixed": lanes of one warp at two different shuffles
      v = lane % 2 == 0 ? __shfl_xor_sync(0xffffffffu, v, 1) : __shfl_down_sync(0xffffffffu, v, 1);
      break;
    case 3:  // "no_syncwarp": lane 0 writes what lane 1 reads, no __syncwarp between
    case 4:  // "syncwarp": the same with one
      if (lane == 0) cell[0] = 7;
      if (bug == 4) __syncwarp();
      if (lane == 1) v = cell[0];
      break;
    case 5:  // "outside_mask": a shuffle among lanes 0-15 reads lane 20
      if (lane < 16) v = __shfl_sync(0x0000ffffu, v, 20);
      break;
    default: {  // "address_before", "address_after", "address_inside": an address
                // 17 back, 16 on, 16 back from element 16 of 32
      const int n = bug == 6 ? -17 : bug == 7 ? 16 : -16;
      if (lane == 0) v = static_cast<int>((shared_address(cell[16]) + n).element);
      break;
    }
  }
  out[threadIdx.x] = v;
}

void warp_bug(const std::string& bug) {
  const char* names[] = {"exited",       "barrier",        "mixed",         "no_syncwarp", "syncwarp",
                         "outside_mask", "address_before", "address_after", "address_inside"};
  int index = 0;
  while (index < 9 && bug != names[index]) {
    ++index;
  }
  TORCH_CHECK(index < 9, "no warp bug called ", bug);
  at::Tensor out = at::zeros({64}, at::kInt);
  CUSTOM_CONV_LAUNCH(1, bug == "barrier" ? 64 : 32, warp_bug_kernel)(index, out.mutable_data_ptr<int>());
}

}  // namespace
}  // namespace gpu
}  // namespace custom_conv

TORCH_LIBRARY_FRAGMENT(custom_conv_emulated, m) {
  m.def("warp_shuffle(Tensor x, str mode, int mask, int operand, int width) -> Tensor",
        &custom_conv::gpu::warp_shuffle);
  m.def("warp_bug(str bug) -> ()", &custom_conv::gpu::warp_bug);
}

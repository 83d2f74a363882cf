// Launch helpers shared by the CUDA kernels.
#pragma once

// c10's CUDA headers rather than ATen/cuda/CUDAContext.h: that one also pulls
// in the cuBLAS/cuSPARSE/cuSOLVER headers, which we do not use and which a
// bare CUDA toolkit may lack. at::cuda::getCurrentCUDAStream is the same
// function, re-exported from c10::cuda.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

namespace custom_conv {
namespace gpu {

constexpr int kThreads = 256;

// Streaming multiprocessors on the current device, to size grids.
inline int64_t multiprocessor_count() {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount,
                                        c10::cuda::current_device()));
  return count;
}

// Blocks for a grid-stride loop over n elements. The grid is capped at a few
// waves of resident blocks: beyond that, extra blocks only add scheduling
// cost, and the cap keeps gridDim.x far below its limit for any n.
inline unsigned int grid_for(int64_t n) {
  const int64_t sms = multiprocessor_count();
  const int64_t wanted = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(wanted, sms * 16)));
}

// Element indices are 64-bit: a column buffer or activation can hold more
// than 2^31 values, and products such as c * H * W overflow 32 bits well
// before the tensors themselves are large.
#define CUSTOM_CONV_GRID_STRIDE_LOOP(i, n)                                     \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; \
       i < (n); i += static_cast<int64_t>(blockDim.x) * gridDim.x)

}  // namespace gpu
}  // namespace custom_conv

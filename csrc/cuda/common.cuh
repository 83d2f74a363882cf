// What the CUDA kernels need from CUDA besides the language itself: the
// launch, the device's limits that launch plans depend on, where scratch
// tensors live, and two spellings (gpu_ptr, shared_array) for the memory the
// kernels touch.
//
// The same sources are compiled a second time, for the CPU, with
// CUSTOM_CONV_EMULATE_CUDA defined (tests/test_cuda_emulator.py does it): then
// tests/emulator/cuda_emulator.h provides every name below instead, runs each
// block's threads as fibers with __syncthreads() as a real barrier, and
// checks every access made through gpu_ptr and shared_array. Here, for nvcc,
// they are plain pointers and arrays and cost nothing.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

#ifdef CUSTOM_CONV_EMULATE_CUDA
#include "cuda_emulator.h"
#else
// c10's CUDA headers rather than ATen/cuda/CUDAContext.h: that one also pulls
// in the cuBLAS/cuSPARSE/cuSOLVER headers, which we do not use and which a
// bare CUDA toolkit may lack. at::cuda::getCurrentCUDAStream is the same
// function, re-exported from c10::cuda.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#define CUSTOM_CONV_RESTRICT __restrict__
// Registers the kernels of this file for CUDA tensors.
#define CUSTOM_CONV_GPU_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(custom_conv, CUDA, m)

namespace custom_conv {
namespace gpu {

// A pointer into global memory.
template <typename T>
using gpu_ptr = T*;

// shared_array<T, A, B> is T[A][B]; declare shared memory with it
// (`__shared__ shared_array<float, 16, 65> tile;`, or past the 48 KiB a block
// may declare statically, as members of a struct taken by dynamic_shared<T>())
// so that the emulator can check every access.
template <typename T, int... kDims>
struct SharedArrayOf {
  using type = T;
};
template <typename T, int kDim, int... kRest>
struct SharedArrayOf<T, kDim, kRest...> {
  using type = typename SharedArrayOf<T, kRest...>::type[kDim];
};
template <typename T, int... kDims>
using shared_array = typename SharedArrayOf<T, kDims...>::type;

using DeviceGuard = c10::cuda::CUDAGuard;

// What launch plans depend on besides the shapes.
struct LaunchLimits {
  int64_t multiprocessors;  // streaming multiprocessors of the current device
  int64_t max_grid_yz = 65535;  // CUDA's limit on gridDim.y and gridDim.z
  // Values of im2col scratch one convolution chunk may use
  // (Conv2dGeometry::batch_chunk).
  int64_t column_budget = int64_t{1} << 22;
  // A pooling call whose indices and window bounds all stay below this
  // indexes in 32 bits (divisor.cuh); tests lower it to reach the 64-bit path.
  int64_t narrow_index_limit = int64_t{1} << 30;
};

inline LaunchLimits launch_limits() {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount,
                                        c10::cuda::current_device()));
  return {count};
}

// Options for scratch tensors on the current device.
inline at::TensorOptions device_options() {
  return at::TensorOptions().device(at::kCUDA, c10::cuda::current_device());
}

// Lets `kernel` take `bytes` of dynamic shared memory on the current device.
// Asking is a call into the driver, under its lock: it is made once per
// kernel, device and larger size, not at every launch.
inline void allow_dynamic_shared(const void* kernel, size_t bytes) {
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, size_t> allowed;  // the most asked for
  const std::pair<const void*, int> key{kernel, c10::cuda::current_device()};
  const std::lock_guard<std::mutex> lock(mutex);
  size_t& most = allowed[key];
  if (bytes > most) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
    most = bytes;
  }
}

// kernel<<<grid, block, shared_bytes, current stream>>>(args...), spelt as
// CUSTOM_CONV_LAUNCH(grid, block, kernel)(args...) so that the emulator,
// which cannot parse <<< >>>, runs the same line; a kernel that takes its
// shared memory by dynamic_shared<T>() is launched with
// CUSTOM_CONV_LAUNCH(...).with_dynamic_shared(sizeof(T))(args...).
template <typename... Params>
struct Launch {
  const char* name;  // the kernel's name as written at the launch (for the emulator's reports)
  void (*kernel)(Params...);
  dim3 grid, block;
  size_t shared_bytes = 0;  // of dynamic shared memory

  // A block may have more than 48 KiB of dynamic shared memory only where
  // its kernel has asked for it (on the current device).
  Launch with_dynamic_shared(size_t bytes) const {
    constexpr size_t kWithoutAsking = 48 * 1024;
    if (bytes > kWithoutAsking) {
      allow_dynamic_shared(reinterpret_cast<const void*>(kernel), bytes);
    }
    return {name, kernel, grid, block, bytes};
  }

  template <typename... Args>
  void operator()(Args&&... args) const {
    kernel<<<grid, block, shared_bytes, at::cuda::getCurrentCUDAStream()>>>(std::forward<Args>(args)...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

template <typename... Params>
Launch<Params...> make_launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block) {
  return {name, kernel, grid, block};
}

// The block's dynamic shared memory as a T (what the launch's
// with_dynamic_shared gave it: at least sizeof(T) bytes).
template <typename T>
__device__ __forceinline__ T& dynamic_shared() {
  extern __shared__ __align__(16) unsigned char dynamic_shared_memory[];
  return *reinterpret_cast<T*>(dynamic_shared_memory);
}

}  // namespace gpu
}  // namespace custom_conv
#endif  // CUSTOM_CONV_EMULATE_CUDA

#define CUSTOM_CONV_LAUNCH(grid, block, ...) \
  ::custom_conv::gpu::make_launch(#__VA_ARGS__, __VA_ARGS__, grid, block)

namespace custom_conv {
namespace gpu {

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n elements. The grid is capped at a few
// waves of resident blocks: beyond that, extra blocks only add scheduling
// cost, and the cap keeps gridDim.x far below its limit for any n.
inline unsigned int grid_for(int64_t n) {
  const int64_t sms = launch_limits().multiprocessors;
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

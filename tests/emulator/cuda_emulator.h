// A small emulation of the CUDA execution model on the CPU, for tests only.
//
// csrc/cuda/common.cuh includes this header instead of CUDA's when
// CUSTOM_CONV_EMULATE_CUDA is defined; the CUDA sources then compile as C++
// and their kernels run here (tests/test_cuda_emulator.py builds them). What
// it provides, and what it checks:
//
// - A launch runs every block of the grid, one block after another. A block's
//   threads are fibers (ucontext) on the calling thread: each runs until it
//   reaches __syncthreads() or returns, and the barrier releases them only
//   when every thread of the block has arrived, as on the GPU. threadIdx,
//   blockIdx, blockDim and gridDim are set for each fiber before it runs.
// - __shared__ variables are per block (a block's fibers share one instance;
//   blocks run one at a time). Declared as shared_array, every access is
//   checked: an index outside the array is reported, and so is a race: two
//   threads touching the same element between two barriers, one of them
//   writing.
// - Global memory is reached through gpu_ptr, which knows the allocation its
//   address came from (every CPU allocation is recorded while
//   track_allocations is on, cuda_emulator.cpp), and reports any access
//   outside it.
// - Launch configurations are checked against CUDA's limits (at most 1024
//   threads per block, gridDim.y and .z within LaunchLimits::max_grid_yz).
// Errors are collected while a launch runs (the kernel goes on, writes that
// miss their allocation land in a scratch value) and the launch then throws,
// naming the kernel, the block and thread, and the access.
//
// What it does not model: timing, warps and their lock-step execution,
// memory ordering between blocks, atomics, streams (everything runs at once,
// in order), and the GPU's floating-point contractions (nvcc fuses a * b + c
// into one rounding; the host compiler here does not).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>
#include <functional>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// One instance per OS thread; a block's fibers all run on the thread that
// launched it, and blocks run one at a time, so this is per block.
#define __shared__ static thread_local
#define CUSTOM_CONV_RESTRICT
#define CUSTOM_CONV_GPU_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(custom_conv_emulated, CPU, m)

// CUDA's built-in names live in the global namespace.
struct dim3 {
  unsigned int x, y, z;
  dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
using uint3 = dim3;
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
void __syncthreads();

namespace custom_conv {
namespace gpu {

struct LaunchLimits {
  int64_t multiprocessors = 2;
  int64_t max_grid_yz = 65535;
  int64_t column_budget = int64_t{1} << 22;
};

namespace emulator {

// The limits launch plans see; tests change them to reach every path with
// small shapes (set_limits in cuda_emulator.cpp).
LaunchLimits& limits();

// Records an error of the running launch, with the block and thread.
void report(const std::string& what);

struct Range {
  uintptr_t begin = 0, end = 0;
  bool known = false;  // false: the address is in no recorded allocation
};
// The recorded allocation holding `address`.
Range allocation_of(const void* address);

// Runs `thread` for every thread of every block.
void run(const char* name, dim3 grid, dim3 block, const std::function<void()>& thread);

template <typename T>
T& scratch() {
  static thread_local std::remove_const_t<T> value{};
  return value;
}

}  // namespace emulator

inline LaunchLimits launch_limits() {
  return emulator::limits();
}

inline at::TensorOptions device_options() {
  return at::TensorOptions().device(at::kCPU);
}

struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};

// A pointer into global memory that checks every access against the
// allocation it points into.
template <typename T>
class gpu_ptr {
 public:
  gpu_ptr() = default;
  gpu_ptr(std::nullptr_t) {}
  gpu_ptr(T* p) : p_(p), range_(p != nullptr ? emulator::allocation_of(p) : emulator::Range{}) {}
  template <typename U, typename = std::enable_if_t<std::is_convertible_v<U*, T*>>>
  gpu_ptr(const gpu_ptr<U>& other) : p_(other.get()), range_(other.range()) {}

  T& operator[](int64_t i) const { return at(p_ + i); }
  T& operator*() const { return at(p_); }
  gpu_ptr operator+(int64_t i) const { return {p_ + i, range_}; }
  bool operator==(std::nullptr_t) const { return p_ == nullptr; }
  bool operator!=(std::nullptr_t) const { return p_ != nullptr; }
  T* get() const { return p_; }
  emulator::Range range() const { return range_; }

 private:
  gpu_ptr(T* p, emulator::Range range) : p_(p), range_(range) {}

  T& at(T* q) const {
    const auto address = reinterpret_cast<uintptr_t>(q);
    if (range_.known && address >= range_.begin && address + sizeof(T) <= range_.end) {
      return *q;
    }
    std::ostringstream what;
    what << "global memory access out of bounds: " << sizeof(T) << " bytes at " << static_cast<const void*>(q);
    if (!range_.known) {
      what << ", from a pointer into no recorded allocation";
    } else {
      const auto offset = static_cast<int64_t>(address - range_.begin);
      what << ", " << offset << " bytes from the start of an allocation of " << (range_.end - range_.begin)
           << " bytes";
    }
    emulator::report(what.str());
    return emulator::scratch<T>();
  }

  T* p_ = nullptr;
  emulator::Range range_;
};

namespace emulator {

// Who touched a shared-memory element since the last barrier.
struct Shadow {
  uint64_t epoch = 0;
  int64_t writer = -1;  // the thread that wrote it, or -1
  int64_t reader = -1;  // the thread that read it, -1 for none, -2 for several
};

void shared_access(Shadow& shadow, bool write, int64_t element, const char* array);

// One element of a shared_array: reading and writing it go through the race
// check.
template <typename T>
class SharedRef {
 public:
  SharedRef(T* value, Shadow* shadow, int64_t element, const char* array)
      : value_(value), shadow_(shadow), element_(element), array_(array) {}
  operator T() const {
    shared_access(*shadow_, false, element_, array_);
    return *value_;
  }
  SharedRef& operator=(const T& v) {
    shared_access(*shadow_, true, element_, array_);
    *value_ = v;
    return *this;
  }
  SharedRef& operator=(const SharedRef& other) { return *this = static_cast<T>(other); }
  SharedRef& operator+=(const T& v) {
    const T old = *this;
    return *this = old + v;
  }

 private:
  T* value_;
  Shadow* shadow_;
  int64_t element_;
  const char* array_;
};

// Indexing into a shared_array one dimension at a time; out-of-range
// indices are reported and redirected to a scratch element.
template <typename T, int... kDims>
class SharedIndex;

template <typename T>
class SharedIndex<T> {
 public:
  SharedIndex(T* data, Shadow* shadow, int64_t offset, const char* array)
      : data_(data), shadow_(shadow), offset_(offset), array_(array) {}
  SharedRef<T> element() const { return {data_ + offset_, shadow_ + offset_, offset_, array_}; }

 private:
  T* data_;
  Shadow* shadow_;
  int64_t offset_;
  const char* array_;
};

template <typename T, int kDim, int... kRest>
class SharedIndex<T, kDim, kRest...> {
 public:
  SharedIndex(T* data, Shadow* shadow, int64_t offset, const char* array)
      : data_(data), shadow_(shadow), offset_(offset), array_(array) {}

  auto operator[](int64_t i) const {
    if (i < 0 || i >= kDim) {
      std::ostringstream what;
      what << "shared memory index " << i << " out of bounds of a dimension of size " << kDim << " of "
           << array_;
      report(what.str());
      static thread_local T scratch_value[(1 * ... * kRest)];
      static thread_local Shadow scratch_shadow[(1 * ... * kRest)];
      return descend(SharedIndex<T, kRest...>(scratch_value, scratch_shadow, 0, array_));
    }
    return descend(SharedIndex<T, kRest...>(data_, shadow_, offset_ * kDim + i, array_));
  }

 private:
  template <int... kLeft>
  static auto descend(SharedIndex<T, kLeft...> index) {
    if constexpr (sizeof...(kLeft) == 0) {
      return index.element();
    } else {
      return index;
    }
  }

  T* data_;
  Shadow* shadow_;
  int64_t offset_;
  const char* array_;
};

template <typename T, int... kDims>
class SharedArray {
 public:
  static constexpr int64_t kSize = (int64_t{1} * ... * kDims);
  auto operator[](int64_t i) { return SharedIndex<T, kDims...>(data_, shadow_, 0, name())[i]; }

 private:
  static const char* name() {
    static const std::string text = [] {
      std::ostringstream s;
      s << "a shared array " << c10::demangle_type<T>();
      ((s << '[' << kDims << ']'), ...);
      return s.str();
    }();
    return text.c_str();
  }

  T data_[kSize];
  Shadow shadow_[kSize];
};

}  // namespace emulator

template <typename T, int... kDims>
using shared_array = emulator::SharedArray<T, kDims...>;

// Runs kernel(args...) on every thread of the grid; the arguments are
// converted to the kernel's parameter types once, on the host, as CUDA copies
// them (gpu_ptr parameters find their allocations then).
template <typename... Params>
struct Launch {
  const char* name;
  void (*kernel)(Params...);
  dim3 grid, block;

  template <typename... Args>
  void operator()(Args&&... args) const {
    const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
    emulator::run(name, grid, block, [&] { std::apply(kernel, params); });
  }
};

template <typename... Params>
Launch<Params...> make_launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block) {
  return {name, kernel, grid, block};
}

}  // namespace gpu
}  // namespace custom_conv

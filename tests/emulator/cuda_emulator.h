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
// - __shared__ variables, and dynamic shared memory (dynamic_shared<T>()),
//   are per block (a block's fibers share one instance; blocks run one at a
//   time); a kernel that takes more dynamic shared memory than its launch
//   gave is reported. Declared as shared_array, every access is
//   checked: an index outside the array is reported, and so is a race: two
//   threads touching the same element between two barriers, one of them
//   writing.
// - Global memory is reached through gpu_ptr, which knows the allocation its
//   address came from (every CPU allocation is recorded while
//   track_allocations is on, cuda_emulator.cpp), and reports any access
//   outside it.
// - Warps: a block's threads form warps of 32 consecutive threads (by
//   linear index), as on the GPU. At a warp-collective operation
//   (__syncwarp, __shfl*_sync, and the tensor-core instructions mma_m16n8k16
//   and ldmatrix of csrc/cuda/tensor_core.cuh) each lane waits until every
//   lane the operation names has arrived; the last to arrive computes every
//   lane's result. Lanes that meet at different operations, or a lane that
//   has returned or waits at __syncthreads() while the others wait for it,
//   are reported (on the GPU: undefined behaviour, usually a hang). The
//   tensor-core instructions follow the PTX ISA's fragment layouts: which
//   lane holds which element of A, B, C and D, which lane's address names
//   which row of an ldmatrix.
// - Shared-memory ordering within a warp: two accesses by lanes of one warp
//   race unless a __syncwarp() lies between them (any __syncwarp of that
//   warp counts, whatever its mask).
// - Asynchronous copies (cp_async_16 / cp_async_commit / cp_async_wait):
//   the copy is made when a wait_group covers it, not at the call; until
//   then its destination is in flight, and any access to it, by any thread,
//   is reported (a missing wait), as is issuing it while another thread of
//   the same barrier interval still uses those elements (a stage buffer
//   refilled too early). Copies still in flight when a thread returns land
//   then.
// - Launch configurations are checked against CUDA's limits (at most 1024
//   threads per block, gridDim.y and .z within LaunchLimits::max_grid_yz).
// Errors are collected while a launch runs (the kernel goes on, writes that
// miss their allocation land in a scratch value) and the launch then throws,
// naming the kernel, the block and thread, and the access.
//
// What it does not model: timing, the lock-step execution of a warp's lanes
// between collectives (lanes run one after another), memory ordering between
// blocks, atomics, streams (everything runs at once, in order), the tensor
// cores' own summation order (products are summed in float in k order, then
// C added), and the GPU's floating-point contractions (nvcc fuses a * b + c
// into one rounding; the host compiler here does not).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
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
// SharedArray aligns its elements itself.
#define __align__(n)
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
void __syncwarp(unsigned mask = 0xffffffffu);

namespace custom_conv {
namespace gpu {

struct LaunchLimits {
  int64_t multiprocessors = 2;
  int64_t max_grid_yz = 65535;
  int64_t column_budget = int64_t{1} << 22;
  int64_t narrow_index_limit = int64_t{1} << 30;
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

// Runs `thread` for every thread of every block, each block with
// `dynamic_shared_bytes` of dynamic shared memory.
void run(const char* name, dim3 grid, dim3 block, size_t dynamic_shared_bytes, const std::function<void()>& thread);

// Reports a kernel that takes `bytes` of dynamic shared memory where its
// launch gave less.
void check_dynamic_shared(size_t bytes);

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
  int64_t reader_warp = -1;  // the readers' warp, -2 for several warps
  // The count of __syncwarp()s of the accessing warp at the last write and
  // the last read: a later access by that warp is ordered after them.
  uint64_t writer_sync = 0, reader_sync = 0;
  // Not reset at barriers: the thread whose cp.async to this element is in
  // flight, or -1.
  int64_t in_flight = -1;
};

void shared_access(Shadow& shadow, bool write, int64_t element, const char* array);

// The address of a shared-memory element, for the instructions that take
// one (ldmatrix, cp.async): the elements from it to the end of its array,
// with their shadows.
template <typename T>
struct SharedPtr {
  T* value;
  Shadow* shadow;
  int64_t element;    // its index in the array, flattened
  int64_t available;  // elements from it to the end of the array
  const char* array;

  // The element n further on in the array (back, where n < 0); one outside
  // it is reported (and this one given instead, so that nothing is written
  // outside).
  SharedPtr operator+(int64_t n) const {
    if (n < -element || n >= available) {
      report("shared memory address " + std::to_string(n) + " elements on from element " + std::to_string(element) +
             " of " + array + ", outside it");
      return *this;
    }
    return {value + n, shadow + n, element + n, available - n, array};
  }
};

// One element of a shared_array: reading and writing it go through the race
// check.
template <typename T>
class SharedRef {
 public:
  SharedRef(T* value, Shadow* shadow, int64_t element, int64_t available, const char* array)
      : value_(value), shadow_(shadow), element_(element), available_(available), array_(array) {}
  SharedPtr<T> address() const { return {value_, shadow_, element_, available_, array_}; }
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
  int64_t available_;
  const char* array_;
};

// Indexing into a shared_array one dimension at a time; out-of-range
// indices are reported and redirected to a scratch element.
template <typename T, int... kDims>
class SharedIndex;

template <typename T>
class SharedIndex<T> {
 public:
  SharedIndex(T* data, Shadow* shadow, int64_t size, int64_t offset, const char* array)
      : data_(data), shadow_(shadow), size_(size), offset_(offset), array_(array) {}
  SharedRef<T> element() const { return {data_ + offset_, shadow_ + offset_, offset_, size_ - offset_, array_}; }

 private:
  T* data_;
  Shadow* shadow_;
  int64_t size_;  // of the whole array
  int64_t offset_;
  const char* array_;
};

template <typename T, int kDim, int... kRest>
class SharedIndex<T, kDim, kRest...> {
 public:
  SharedIndex(T* data, Shadow* shadow, int64_t size, int64_t offset, const char* array)
      : data_(data), shadow_(shadow), size_(size), offset_(offset), array_(array) {}

  auto operator[](int64_t i) const {
    if (i < 0 || i >= kDim) {
      std::ostringstream what;
      what << "shared memory index " << i << " out of bounds of a dimension of size " << kDim << " of "
           << array_;
      report(what.str());
      static thread_local T scratch_value[(1 * ... * kRest)];
      static thread_local Shadow scratch_shadow[(1 * ... * kRest)];
      return descend(SharedIndex<T, kRest...>(scratch_value, scratch_shadow, (1 * ... * kRest), 0, array_));
    }
    return descend(SharedIndex<T, kRest...>(data_, shadow_, size_, offset_ * kDim + i, array_));
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
  int64_t size_;
  int64_t offset_;
  const char* array_;
};

template <typename T, int... kDims>
class SharedArray {
 public:
  static constexpr int64_t kSize = (int64_t{1} * ... * kDims);
  auto operator[](int64_t i) { return SharedIndex<T, kDims...>(data_, shadow_, kSize, 0, name())[i]; }

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

  // Aligned as the GPU's declarations are (tensor_core.cuh), so that the
  // 16-byte alignment ldmatrix and cp.async need is a property of the index.
  alignas(16) T data_[kSize];
  Shadow shadow_[kSize];
};

}  // namespace emulator

template <typename T, int... kDims>
using shared_array = emulator::SharedArray<T, kDims...>;

template <typename T>
emulator::SharedPtr<T> shared_address(const emulator::SharedRef<T>& element) {
  return element.address();
}

// The block's dynamic shared memory as a T: one instance per T, which
// blocks, run one at a time, share as they share __shared__ variables (its
// shared_arrays check their accesses). A T larger than the launch gave is
// reported: both sizes are the emulator's (whose shared_arrays are larger
// than the GPU's), so the comparison comes out as it would on the GPU.
template <typename T>
T& dynamic_shared() {
  emulator::check_dynamic_shared(sizeof(T));
  static thread_local T memory;
  return memory;
}

namespace emulator {

// ------------------------------------------------------------------ warps

// What the lanes of a warp bring to a warp-collective operation: each lane's
// input and where its result goes (both on the lane's own stack, which lives
// while the lane waits).
struct WarpExchange {
  unsigned lanes;        // the lanes taking part, bit i for lane i
  int64_t first_thread;  // the block's linear index of lane 0
  const void* in[32];
  void* out[32];
};
using WarpCombine = void (*)(const WarpExchange&);

// The calling lane waits here until every lane of `mask` (0: every lane of
// its warp, as the .aligned instructions require) has arrived at the same
// operation `op`; the last to arrive runs combine once, for all of them.
void warp_collective(const char* op, unsigned mask, const void* in, void* out, WarpCombine combine);

// Runs fn with thread t of the block as the current thread, for the checks:
// the lane whose address an instruction used is the one that accessed it.
void as_thread(int64_t t, const std::function<void()>& fn);

template <typename T>
float float_of_bits(uint16_t b) {
  T value;
  std::memcpy(&value, &b, 2);
  return static_cast<float>(value);
}

enum class Shuffle { kIndex, kUp, kDown, kXor };

template <typename T>
struct ShuffleIn {
  T value;
  int operand;  // the source lane, the delta or the xor mask
  int width;
};

// CUDA's rules: lanes are split into segments of `width`; the index form
// reads lane `operand % width` of its segment; up/down read `delta` lanes
// before/after, keeping their own value where that leaves the segment; xor
// reads lane ^ mask, keeping its own value where that lies in a later
// segment. Reading a lane outside the mask is undefined: reported.
template <typename T, Shuffle kMode>
void shuffle_combine(const WarpExchange& x) {
  for (int lane = 0; lane < 32; ++lane) {
    if (!(x.lanes >> lane & 1u)) {
      continue;
    }
    const auto& in = *static_cast<const ShuffleIn<T>*>(x.in[lane]);
    const int base = lane & ~(in.width - 1);
    int source = lane;
    switch (kMode) {
      case Shuffle::kIndex: source = base + (in.operand & (in.width - 1)); break;
      case Shuffle::kUp: source = lane - in.operand >= base ? lane - in.operand : lane; break;
      case Shuffle::kDown: source = lane + in.operand < base + in.width ? lane + in.operand : lane; break;
      case Shuffle::kXor: source = (lane ^ in.operand) < base + in.width ? lane ^ in.operand : lane; break;
    }
    if (!(x.lanes >> source & 1u)) {
      as_thread(x.first_thread + lane, [&] {
        report("a shuffle reads lane " + std::to_string(source) + ", which is not in its mask");
      });
      source = lane;
    }
    *static_cast<T*>(x.out[lane]) = static_cast<const ShuffleIn<T>*>(x.in[source])->value;
  }
}

template <Shuffle kMode, typename T>
T shuffle(const char* op, unsigned mask, T value, int operand, int width) {
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    report(std::string(op) + ": width " + std::to_string(width) + " is not a power of two up to 32");
    width = 32;
  }
  const ShuffleIn<T> in{value, operand, width};
  T out{};
  warp_collective(op, mask, &in, &out, &shuffle_combine<T, kMode>);
  return out;
}

// ------------------------------------------------------- asynchronous copies

// Starts copying `bytes` (its snapshot, taken now) into `count` elements of
// `element_bytes` at dst; lands at a cp_async_wait that covers it.
void async_copy(SharedPtr<char> dst, int64_t count, size_t element_bytes, const void* bytes);
void async_commit();
void async_wait(int groups_left);

}  // namespace emulator

// cp.async.cg.shared.global, 16 bytes: dst and src 16-byte aligned; with
// `zeros` (ignore-src), zeros and nothing read.
template <typename T>
void cp_async_16(emulator::SharedPtr<T> dst, gpu_ptr<const T> src, bool zeros) {
  constexpr int64_t kCount = 16 / static_cast<int64_t>(sizeof(T));
  static_assert(kCount * sizeof(T) == 16, "whole elements in 16 bytes");
  unsigned char bytes[16] = {};
  if (reinterpret_cast<uintptr_t>(src.get()) % 16 != 0) {
    emulator::report("cp.async: the global source address is not 16-byte aligned");
  }
  for (int64_t i = 0; i < (zeros ? 0 : kCount); ++i) {
    const T value = src[i];  // bounds-checked
    std::memcpy(bytes + i * sizeof(T), &value, sizeof(T));
  }
  emulator::async_copy({reinterpret_cast<char*>(dst.value), dst.shadow, dst.element, dst.available, dst.array},
                       kCount, sizeof(T), bytes);
}

inline void cp_async_commit() {
  emulator::async_commit();
}

// cp.async.wait_group N: every committed group but the newest N has landed.
template <int kGroupsLeft>
void cp_async_wait() {
  emulator::async_wait(kGroupsLeft);
}

namespace emulator {

// ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16: lanes 8j..8j+7
// give the addresses of the 8 rows (16 bytes each, 16-byte aligned) of
// matrix j; lane l receives, in register j, bytes 4 (l % 4) .. 4 (l % 4) + 3
// of row l / 4 of matrix j: elements 2 (l % 4) and 2 (l % 4) + 1 of 16-bit
// rows, the first in the low half, or element l % 4 of 32-bit ones. With
// .trans (16-bit only): column l / 4, rows 2 (l % 4) and 2 (l % 4) + 1.
template <typename T, int kMatrices, bool kTrans>
void ldmatrix_combine(const WarpExchange& x) {
  constexpr int kPerRow = 16 / static_cast<int>(sizeof(T));
  unsigned char rows[4][8][16];
  for (int j = 0; j < kMatrices; ++j) {
    for (int r = 0; r < 8; ++r) {
      const int lane = 8 * j + r;
      const SharedPtr<T> row = *static_cast<const SharedPtr<T>*>(x.in[lane]);
      as_thread(x.first_thread + lane, [&] {
        if (row.available < kPerRow || (row.element * static_cast<int64_t>(sizeof(T))) % 16 != 0) {
          report("ldmatrix: the row address (element " + std::to_string(row.element) + " of " + row.array +
                 ") is not 16-byte aligned or its 16 bytes leave the array");
          std::memset(rows[j][r], 0, sizeof(rows[j][r]));
          return;
        }
        for (int c = 0; c < kPerRow; ++c) {
          shared_access(row.shadow[c], false, row.element + c, row.array);
        }
        std::memcpy(rows[j][r], row.value, 16);
      });
    }
  }
  for (int lane = 0; lane < 32; ++lane) {
    auto* out = static_cast<uint32_t*>(x.out[lane]);
    for (int j = 0; j < kMatrices; ++j) {
      if constexpr (kTrans) {
        const int column = lane / 4, first = 2 * (lane % 4);
        uint16_t lo, hi;
        std::memcpy(&lo, &rows[j][first][2 * column], 2);
        std::memcpy(&hi, &rows[j][first + 1][2 * column], 2);
        out[j] = static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16;
      } else {
        std::memcpy(&out[j], &rows[j][lane / 4][4 * (lane % 4)], 4);
      }
    }
  }
}

struct MmaIn {
  uint32_t a[4], b[2];
  float c[4];
};

// D = A B + C, the K-step product of A (16 x K) and B (K x 8) in float,
// each lane's four D elements written to its output: element i at row
// g + 8 (i / 2), column 2t + i % 2, with g = lane / 4 and t = lane % 4 (the
// same for every shape here).
template <int K>
void mma_store(const WarpExchange& x, const float (&a)[16][K], const float (&b)[K][8], const float (&c)[16][8]) {
  for (int lane = 0; lane < 32; ++lane) {
    auto* d = static_cast<float*>(x.out[lane]);
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) {
      const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
      float sum = 0.0f;
      for (int k = 0; k < K; ++k) {
        sum += a[row][k] * b[k][col];
      }
      d[i] = sum + c[row][col];
    }
  }
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32:
// D (16 x 8) = A (16 x 16) B (16 x 8) + C. With g = lane / 4 and
// t = lane % 4, a lane holds (each register two 16-bit elements, the lower
// column or row in the low half):
//   A: register i, row g + 8 (i % 2), columns 2t + 8 (i / 2) + {0, 1}
//   B: register i, rows 2t + 8 i + {0, 1}, column g
//   C, D: element i, row g + 8 (i / 2), column 2t + i % 2
template <typename T>
void mma_combine(const WarpExchange& x) {
  float a[16][16], b[16][8], c[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const MmaIn& in = *static_cast<const MmaIn*>(x.in[lane]);
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) {
      for (int h = 0; h < 2; ++h) {
        a[g + 8 * (i % 2)][2 * t + 8 * (i / 2) + h] = float_of_bits<T>(static_cast<uint16_t>(in.a[i] >> (16 * h)));
        c[g + 8 * (i / 2)][2 * t + i % 2] = in.c[i];
      }
    }
    for (int i = 0; i < 2; ++i) {
      for (int h = 0; h < 2; ++h) {
        b[2 * t + 8 * i + h][g] = float_of_bits<T>(static_cast<uint16_t>(in.b[i] >> (16 * h)));
      }
    }
  }
  mma_store(x, a, b, c);
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32: with g = lane / 4 and
// t = lane % 4, A (16 x 8) register i at row g + 8 (i % 2), column
// t + 4 (i / 2); B (8 x 8) register i at row t + 4 i, column g; C and D as
// for m16n8k16. The tensor cores read an operand's upper 19 bits (TF32).
inline float tf32_value(uint32_t bits) {
  bits &= 0xFFFFE000u;
  float v;
  std::memcpy(&v, &bits, 4);
  return v;
}

inline void mma_tf32_combine(const WarpExchange& x) {
  float a[16][8], b[8][8], c[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const MmaIn& in = *static_cast<const MmaIn*>(x.in[lane]);
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) {
      a[g + 8 * (i % 2)][t + 4 * (i / 2)] = tf32_value(in.a[i]);
      c[g + 8 * (i / 2)][2 * t + i % 2] = in.c[i];
    }
    for (int i = 0; i < 2; ++i) {
      b[t + 4 * i][g] = tf32_value(in.b[i]);
    }
  }
  mma_store(x, a, b, c);
}

}  // namespace emulator

template <int kMatrices, bool kTrans = false, typename T>
void ldmatrix(uint32_t (&r)[kMatrices], emulator::SharedPtr<T> row) {
  static_assert(kMatrices == 1 || kMatrices == 2 || kMatrices == 4, "x1, x2 or x4");
  static_assert(sizeof(T) == 2 || (sizeof(T) == 4 && !kTrans), "16-bit elements, or 32-bit ones untransposed");
  uint32_t out[4];
  emulator::warp_collective(kTrans ? "ldmatrix.trans" : "ldmatrix", 0, &row, out,
                            &emulator::ldmatrix_combine<T, kMatrices, kTrans>);
  for (int j = 0; j < kMatrices; ++j) {
    r[j] = out[j];
  }
}

inline void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
  emulator::MmaIn in;
  std::memcpy(in.a, a, sizeof(in.a));
  std::memcpy(in.b, b, sizeof(in.b));
  std::memcpy(in.c, c, sizeof(in.c));
  float out[4];
  emulator::warp_collective("mma.m16n8k8.tf32", 0, &in, out, &emulator::mma_tf32_combine);
  std::memcpy(d, out, sizeof(out));
}

// cvt.rna.tf32.f32: to nearest, ties away from zero (on the magnitude: add
// half of the last kept bit, drop the 13 bits below it); infinities and NaNs
// as they are.
inline uint32_t tf32_bits(uint32_t bits) {
  if ((bits & 0x7F800000u) == 0x7F800000u) {
    return bits & 0xFFFFE000u | ((bits & 0x007FFFFFu) != 0 ? 0x00400000u : 0u);
  }
  return (bits + 0x1000u) & 0xFFFFE000u;
}

inline uint32_t to_tf32(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  return tf32_bits(bits);
}

template <typename T>
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
  static_assert(std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>, "f16 or bf16");
  emulator::MmaIn in;
  std::memcpy(in.a, a, sizeof(in.a));
  std::memcpy(in.b, b, sizeof(in.b));
  std::memcpy(in.c, c, sizeof(in.c));
  float out[4];
  emulator::warp_collective(std::is_same_v<T, c10::Half> ? "mma.m16n8k16.f16" : "mma.m16n8k16.bf16", 0, &in, out,
                            &emulator::mma_combine<T>);
  std::memcpy(d, out, sizeof(out));
}

// Runs kernel(args...) on every thread of the grid; the arguments are
// converted to the kernel's parameter types once, on the host, as CUDA copies
// them (gpu_ptr parameters find their allocations then).
template <typename... Params>
struct Launch {
  const char* name;
  void (*kernel)(Params...);
  dim3 grid, block;
  size_t shared_bytes = 0;  // of dynamic shared memory

  Launch with_dynamic_shared(size_t bytes) const { return {name, kernel, grid, block, bytes}; }

  template <typename... Args>
  void operator()(Args&&... args) const {
    const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
    emulator::run(name, grid, block, shared_bytes, [&] { std::apply(kernel, params); });
  }
};

template <typename... Params>
Launch<Params...> make_launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block) {
  return {name, kernel, grid, block};
}

}  // namespace gpu
}  // namespace custom_conv

// CUDA's warp shuffles, in the global namespace as CUDA declares them.
template <typename T>
T __shfl_sync(unsigned mask, T value, int lane, int width = 32) {
  using namespace custom_conv::gpu::emulator;
  return shuffle<Shuffle::kIndex>("__shfl_sync", mask, value, lane, width);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  using namespace custom_conv::gpu::emulator;
  return shuffle<Shuffle::kUp>("__shfl_up_sync", mask, value, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  using namespace custom_conv::gpu::emulator;
  return shuffle<Shuffle::kDown>("__shfl_down_sync", mask, value, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  using namespace custom_conv::gpu::emulator;
  return shuffle<Shuffle::kXor>("__shfl_xor_sync", mask, value, lane_mask, width);
}

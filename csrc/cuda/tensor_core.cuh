// The warp-level instructions the tensor-core GEMM (gemm.cuh) is built from,
// as PTX for nvcc (compute capability 8.0 and later, the archs setup.py
// builds). Under CUSTOM_CONV_EMULATE_CUDA, tests/emulator/cuda_emulator.h
// defines the same functions: it runs each as the PTX ISA specifies it, for
// the 32 lanes of a warp at once, and checks the addresses they use.
//
// - ldmatrix<kMatrices, kTrans>(r, row): the warp loads kMatrices (1, 2, 4)
//   matrices of 8 x 8 16-bit elements from shared memory. Lanes 8j .. 8j+7
//   give the addresses of the rows of matrix j (16-byte aligned, 8 contiguous
//   elements each); lane l receives in r[j] elements 2 (l % 4) and
//   2 (l % 4) + 1 of row l / 4 of matrix j, the first in the low 16 bits.
//   kTrans transposes each matrix on the way (column l / 4 instead of row),
//   so a tile stored the other way round gives the same fragments.
//   On 32-bit elements (float, for TF32) a row is 4 elements and lane l
//   receives element l % 4 of row l / 4; no .trans.
// - mma_m16n8k16<T>(d, a, b, c): the warp computes D (16 x 8, float) =
//   A (16 x 16, T) B (16 x 8, T) + C on the tensor cores, T half or
//   bfloat16. With g = lane / 4 and t = lane % 4, a lane holds
//     A in a[i]: row g + 8 (i % 2), columns 2t + 8 (i / 2) + {0, 1}
//     B in b[i]: rows 2t + 8 i + {0, 1}, column g
//     C, D in c[i], d[i]: row g + 8 (i / 2), column 2t + i % 2
//   which is what ldmatrix x4 gives for a 16 x 16 tile of A (matrices: rows
//   0-7 and 8-15 of columns 0-7, then of columns 8-15) and for B stored with
//   k contiguous (per 8 columns: rows 0-7, then 8-15).
// - mma_m16n8k8_tf32(d, a, b, c): D (16 x 8) = A (16 x 8) B (8 x 8) + C in
//   TF32 (float's range, 10 bits of mantissa), each register one element:
//     A in a[i]: row g + 8 (i % 2), column t + 4 (i / 2)
//     B in b[i]: row t + 4 i, column g
//     C, D as above
//   again what ldmatrix x4 gives, on float tiles stored with k contiguous.
//   to_tf32(x) rounds a float to TF32 (to nearest, ties away from zero, as
//   cvt.rna does), as the operands must be before mma reads them.
// - cp_async_16(dst, src, zeros): one thread starts copying 16 bytes from
//   global to shared memory (both 16-byte aligned) without passing through
//   registers; with `zeros`, 16 zero bytes instead, and src is not read (so
//   that a chunk of zeros is written the same way as any other);
//   cp_async_commit() closes the thread's group of copies started since the
//   last commit; cp_async_wait<N>() waits until all but the newest N
//   committed groups have landed. Other threads see the data only after a
//   barrier that follows the wait.
#pragma once

#include "common.cuh"

#include <cstdint>

#ifndef CUSTOM_CONV_EMULATE_CUDA
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <type_traits>

namespace custom_conv {
namespace gpu {

__device__ __forceinline__ uint32_t shared_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// The address of a shared-memory element (`shared_address(tile[i][j])`), in
// the 32 bits of the shared window that ldmatrix and cp.async take, and the
// elements after it by `+`; the emulator's version carries the element's
// checks along. (Kept from step to step as such, it stays one register; a
// pointer would be converted at every use.)
template <typename T>
struct SharedAddress {
  uint32_t bytes;
  __device__ __forceinline__ SharedAddress operator+(int elements) const {
    return {bytes + static_cast<uint32_t>(elements) * static_cast<uint32_t>(sizeof(T))};
  }
};
template <typename T>
__device__ __forceinline__ SharedAddress<T> shared_address(T& element) {
  return {shared_u32(&element)};
}

template <int kMatrices, bool kTrans = false, typename T>
__device__ __forceinline__ void ldmatrix(uint32_t (&r)[kMatrices], SharedAddress<T> row) {
  static_assert(sizeof(T) == 2 || (sizeof(T) == 4 && !kTrans), "16-bit elements, or 32-bit ones untransposed");
  const uint32_t address = row.bytes;
  if constexpr (kMatrices == 4 && !kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(address));
  } else if constexpr (kMatrices == 4 && kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(address));
  } else if constexpr (kMatrices == 2 && !kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(address));
  } else if constexpr (kMatrices == 2 && kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(address));
  } else if constexpr (kMatrices == 1 && !kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(address));
  } else {
    static_assert(kMatrices == 1 && kTrans, "x1, x2 or x4");
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(address));
  }
}

template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                             const float (&c)[4]) {
  if constexpr (std::is_same_v<T, c10::Half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
  } else {
    static_assert(std::is_same_v<T, c10::BFloat16>, "f16 or bf16");
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
  }
}

__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                 const float (&c)[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
}

__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

// A float's bits (an ldmatrix register of a float tile), rounded to TF32.
__device__ __forceinline__ uint32_t tf32_bits(uint32_t float_bits) {
  return to_tf32(__uint_as_float(float_bits));
}

// .cg: cached in L2 only; each tile is read once per block.
// The ignore-src predicate, not a source size: nvcc turns a source size
// into an address adjustment besides the predicate.
template <typename T>
__device__ __forceinline__ void cp_async_16(SharedAddress<T> dst, const T* src, bool zeros) {
  asm volatile(
      "{\n .reg .pred z;\n setp.ne.b32 z, %2, 0;\n cp.async.cg.shared.global [%0], [%1], 16, z;\n}\n" ::"r"(
          dst.bytes),
      "l"(src), "r"(static_cast<int32_t>(zeros)));
}

__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}

template <int kGroupsLeft>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kGroupsLeft));
}

}  // namespace gpu
}  // namespace custom_conv
#endif  // CUSTOM_CONV_EMULATE_CUDA

namespace custom_conv {
namespace gpu {

// The address as a number, to test its alignment (gpu_ptr is a checked
// pointer under the emulator).
template <typename T>
inline uintptr_t address_bits(gpu_ptr<T> p) {
#ifdef CUSTOM_CONV_EMULATE_CUDA
  return reinterpret_cast<uintptr_t>(p.get());
#else
  return reinterpret_cast<uintptr_t>(p);
#endif
}

}  // namespace gpu
}  // namespace custom_conv

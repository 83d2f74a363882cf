// Vector types for any x86-64 CPU (see vectors_avx512.h): GCC's vector
// extensions on 16 bytes, which the compiler maps to SSE2, the baseline every
// x86-64 CPU has, or to plain scalar code elsewhere. There is no fused
// multiply-add below AVX2: fma is a multiply and an add.
#pragma once

namespace custom_conv {
namespace vectors {
namespace {

// The vector type of 16 bytes of T (the attribute needs a concrete type).
template <typename T>
struct Vector16;
template <>
struct Vector16<float> {
  typedef float type __attribute__((vector_size(16)));
};
template <>
struct Vector16<double> {
  typedef double type __attribute__((vector_size(16)));
};

template <typename T>
struct Baseline {
  using scalar = T;
  using reg = typename Vector16<T>::type;
  static constexpr int lanes = 16 / sizeof(T);
  static reg zero() { return reg{}; }
  static reg load(const T* p) {
    reg v;
    __builtin_memcpy(&v, p, sizeof(v));
    return v;
  }
  static void store(T* p, reg v) { __builtin_memcpy(p, &v, sizeof(v)); }
  static reg add(reg a, reg b) { return a + b; }
  static reg mul(reg a, reg b) { return a * b; }
  static reg broadcast(const T* p) { return reg{} + *p; }
  static reg fma(reg a, reg b, reg c) { return a * b + c; }
};

}  // namespace
}  // namespace vectors
}  // namespace custom_conv

// CUSTOM_CONV_VECTOR_CLONES: compile a function for AVX-512, AVX2 and plain
// x86-64, the version chosen when the library loads (GCC's function
// multi-versioning; other compilers build one version). For loops left to
// the compiler to vectorise; the direct kernels (direct/) pick their
// instruction set themselves.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CUSTOM_CONV_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CUSTOM_CONV_VECTOR_CLONES
#endif

// conv2d's kernels for bfloat16, compiled apart from the other dtypes' (conv2d_kernels.h).
#include "conv2d_kernels.cuh"

template struct custom_conv::gpu::Conv2dKernels<c10::BFloat16>;

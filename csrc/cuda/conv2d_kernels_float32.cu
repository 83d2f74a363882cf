// conv2d's kernels for float32, compiled apart from the other dtypes' (conv2d_kernels.h).
#include "conv2d_kernels.cuh"

template struct custom_conv::gpu::Conv2dKernels<float>;

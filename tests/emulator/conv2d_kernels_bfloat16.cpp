// csrc/cuda/conv2d_kernels_bfloat16.cu, compiled for the CPU against cuda_emulator.h.
#include "../../csrc/cuda/conv2d_kernels_bfloat16.cu"

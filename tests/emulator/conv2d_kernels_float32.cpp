// csrc/cuda/conv2d_kernels_float32.cu, compiled for the CPU against cuda_emulator.h.
#include "../../csrc/cuda/conv2d_kernels_float32.cu"

// csrc/cuda/conv2d.cu, compiled for the CPU against cuda_emulator.h.
#include "../../csrc/cuda/conv2d.cu"

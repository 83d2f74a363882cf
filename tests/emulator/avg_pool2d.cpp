// csrc/cuda/avg_pool2d.cu, compiled for the CPU against cuda_emulator.h.
#include "../../csrc/cuda/avg_pool2d.cu"

// The backward of max-pooling on the CPU, for max_pool2d and
// adaptive_max_pool2d: each output's gradient goes to the one input element
// its index names (the transpose of the forward's 0/1 selection). One thread
// owns a whole plane, so overlapping windows that picked the same input add
// up without atomics, in a fixed order.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace custom_conv {

// grad_input (input_size, NCHW) from contiguous grad_output and indices of
// `planes` planes; outputs whose window holds no input (holds_input[o] == 0,
// one flag per output of a plane; null: every window holds input) route
// their gradient nowhere.
at::Tensor route_max_pool_gradients(const at::Tensor& grad_output, const at::Tensor& indices,
                                    c10::IntArrayRef input_size, int64_t planes, int64_t in_plane,
                                    int64_t out_plane, const std::vector<char>* holds_input);

}  // namespace custom_conv

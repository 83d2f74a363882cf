// The memory format of our results, torch's rule written once. torch's
// conv2d returns a channels_last result when its input or its weight
// suggests channels_last (Tensor::suggest_memory_format, judged from the
// strides alone: a slice of a channels_last tensor counts, a tensor that is
// contiguous both ways does not), and max_pool2d, indices included, and
// avg_pool2d (adaptive too) when its input does; the gradients come back in
// the layout of the forward's result. Our ops answer so (the CPU and CUDA
// kernels through in_memory_format, or by storing in that layout, and the
// Meta kernels in meta.cpp): the forward ops by the rules below; the
// gradient ops channels-last only where a forward tensor they are given
// shows the forward was (conv2d_gradient_memory_format,
// max_pool2d_gradient_memory_format), or, for avg_pool2d's, which are given
// none, where the output gradient suggests it; else NCHW. custom_conv/autograd.py
// (and autograd.cpp) give each gradient the forward's layout, with torch's
// Python twin of suggest_memory_format: a copy only where the op's NCHW
// gradient belongs to a channels-last forward (a conv's input channels-last
// and its weight not, say).
// So the ops give torch's layout whether called as torch.ops.custom_conv.*
// or through custom_conv.functional.
#pragma once

#include <ATen/ATen.h>

namespace custom_conv {

inline bool suggests_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && t.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

inline at::MemoryFormat conv2d_memory_format(const at::Tensor& input, const at::Tensor& weight) {
  return suggests_channels_last(input) || suggests_channels_last(weight) ? at::MemoryFormat::ChannelsLast
                                                                        : at::MemoryFormat::Contiguous;
}

// A conv2d gradient op's result: channels-last where the forward's tensor it
// is given (the weight, for the input's gradient; the input, for the
// weight's) suggests it. The forward was channels-last then, and so are
// torch's gradients: a channels-last network's gradients need no copy. Not
// the output gradient's layout: a training step hands both gradient ops a
// channels-last copy of an NCHW network's output gradient where both gather
// from one (autograd.cpp), and that network's gradients are NCHW.
inline at::MemoryFormat conv2d_gradient_memory_format(const at::Tensor& forward_tensor) {
  return suggests_channels_last(forward_tensor) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

inline at::MemoryFormat max_pool2d_memory_format(const at::Tensor& input) {
  return suggests_channels_last(input) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// max_pool2d's gradient op: the layout its indices suggest, which the
// forward gave them, its result's: the layout of torch's input gradient,
// whatever the output gradient's (an expanded one suggests none).
inline at::MemoryFormat max_pool2d_gradient_memory_format(const at::Tensor& indices) {
  return max_pool2d_memory_format(indices);
}

// avg_pool2d's gradient ops (adaptive too), which take the input's size but
// no forward tensor: the layout the output gradient suggests, so that a
// channels-last network's gradient is read and written in place and comes
// back in torch's layout. Where the two differ (the expanded gradient of a
// sum, which suggests none; a global pool's N x C x 1 x 1 gradient, a view
// of the next layer's), custom_conv/autograd.py copies into the forward's.
inline at::MemoryFormat avg_pool2d_gradient_memory_format(const at::Tensor& grad_output) {
  return suggests_channels_last(grad_output) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// `t`, an NCHW result, in `format`, with torch's strides exactly (also for
// one channel, where t.contiguous(ChannelsLast) would keep t as it is since
// it is contiguous in both formats, but torch's results carry channels_last
// strides). Sizes and strides may be symbolic (torch.compile traces the
// Meta kernels).
inline at::Tensor in_memory_format(const at::Tensor& t, at::MemoryFormat format) {
  if (!t.defined() || format == at::MemoryFormat::Contiguous) {
    return t;
  }
  at::Tensor out = at::empty_symint(t.sym_sizes(), t.options().memory_format(format));
  return out.sym_strides() == t.sym_strides() ? t : out.copy_(t);
}

}  // namespace custom_conv

// Scratch memory the CPU routes reuse from call to call.
//
// A route's temporaries (a block's Winograd transforms, an im2col chunk, a
// padded copy of the input) have the same sizes call after call. Taken
// from malloc and freed every time, those of megabytes went back to the
// system (glibc trims the top of its heap, and a worker thread's arena
// shrinks its heap), and the next call faulted them in again, 4 KiB at a
// time: a 64-to-128-channel 16x16 layer's Winograd weight gradient spent a
// fifth of its time in page faults that way.
//
// So they come from a pool instead: scratch_empty() is at::empty for a
// tensor that never leaves the op, over a buffer that goes back to the pool
// when the tensor dies and serves the next request it is large enough for.
// The pool keeps a few buffers per thread
// at most, and never more bytes than the process's scratch had in use at
// one moment; release_scratch() hands all it keeps back to the system.
// Temporaries under a quarter of a MiB are at::empty's; buffers of 2 MiB and
// more are asked for 2 MiB pages (madvise), for the TLB's sake.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace custom_conv {

// A contiguous tensor of `sizes` over pooled memory (64-byte aligned), for a
// temporary of the op: its values are undefined, as at::empty's.
at::Tensor scratch_empty(at::IntArrayRef sizes, const at::TensorOptions& options);

// The same, filled with zeros.
at::Tensor scratch_zeros(at::IntArrayRef sizes, const at::TensorOptions& options);

// (bytes the pool keeps free, bytes in use by live scratch tensors, most
// bytes in use at once since the last call, buffers taken from the system
// so far): for the tests and the benchmark's measure of scratch memory.
std::vector<int64_t> scratch_stats();

// Frees every buffer the pool keeps (those in use go back to the system when
// their tensors die); returns the bytes freed.
int64_t release_scratch();

}  // namespace custom_conv

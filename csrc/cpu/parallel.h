// How the CPU kernels split work over threads (at::parallel_for).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <cstdint>

namespace custom_conv {

// Waking threads for less than about a million multiply-adds costs more
// than it saves: work is split into tasks of at least this much.
constexpr int64_t kMinTaskMacs = int64_t{1} << 20;

// The grain for at::parallel_for over `count` items of `macs_per_item`
// multiply-adds each: at most a task per thread, each of at least
// kMinTaskMacs, and the items spread evenly over those tasks. A grain of
// kMinTaskMacs' worth of items alone split 8 tiles of a small layer as 7
// and 1: the second thread was woken for an eighth of the work, and in some
// processes on a shared machine the first then ran its share at half speed
// while the second spun (why, not pinned down): that layer's forward at
// batch 1 took 0.10 ms there instead of 0.045. On one thread: 0.041.
inline int64_t task_grain(int64_t count, int64_t macs_per_item) {
  const int64_t total = count * std::max<int64_t>(1, macs_per_item);
  const int64_t tasks = std::clamp<int64_t>(total / kMinTaskMacs, 1, std::max(1, at::get_num_threads()));
  return std::max<int64_t>(1, (count + tasks - 1) / tasks);
}

// Work items (one (sample, channel) plane each) per thread chunk: enough
// planes that a task copies ~32K values, so tiny layers are not split into
// tasks that cost more to schedule than to run.
inline int64_t plane_grain(int64_t work_per_plane) {
  constexpr int64_t kValuesPerTask = 32768;
  return std::max<int64_t>(1, kValuesPerTask / std::max<int64_t>(1, work_per_plane));
}

// at::parallel_for for bodies that call ATen ops (the GEMMs): worker threads
// start without the caller's thread-local state, so without this they would
// re-enter autograd (and fail on tensors that require grad) and escape the
// profiler. Items are split over threads only in tasks of at least
// kMinTaskMacs multiply-adds.
template <typename F>
void parallel_for_with_state(int64_t count, int64_t macs_per_item, F body) {
  const int64_t grain = std::max<int64_t>(1, kMinTaskMacs / std::max<int64_t>(1, macs_per_item));
  const at::ThreadLocalState state;
  at::parallel_for(0, count, grain, [&](int64_t b, int64_t e) {
    at::ThreadLocalStateGuard guard(state);
    body(b, e);
  });
}

}  // namespace custom_conv

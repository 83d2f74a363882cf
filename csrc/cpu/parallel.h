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

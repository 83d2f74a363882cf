// How the CPU kernels split work over threads (at::parallel_for).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

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

// Boundary i (0 <= i <= count) of `count` ranges that share `total` items,
// in whole multiples of `unit` but for the last range's remainder; every
// range holds at least one unit when count <= total / unit.
inline int64_t unit_range_bound(int64_t i, int64_t count, int64_t total, int64_t unit) {
  return i == count ? total : i * (total / unit) / count * unit;
}

// body(begin, end) over the items [0, count) of `macs_per_item` multiply-
// adds each, on as many threads as task_grain gives tasks. Each task walks
// its own contiguous share of the items one at a time, then takes the
// unfinished items from the far ends of the other shares. On a shared
// machine one core can run a share 10-40% slower than the other for
// seconds at a time (ResNet-20's 32-64 /2 input gradient at batch 32: one
// thread 0.67 ms, the other 0.48, in one process; 0.48 and 0.43 in
// another); with fixed shares the faster thread then waited for it. The
// ResNet-20 training step, alternating with fixed shares in one process on
// two threads: median 60.4 ms against 62.5, fastest 55.4 against 55.1.
// Results do not depend on which thread runs an item (every route's items
// write their own outputs or partial sums), so they stay bitwise the same.
// The body may call ATen ops (the GEMMs): worker threads start without the
// caller's thread-local state, so without it they would re-enter autograd
// (and fail on tensors that require grad) and escape the profiler.
template <typename F>
void parallel_items(int64_t count, int64_t macs_per_item, F body) {
  const int64_t grain = task_grain(count, macs_per_item);
  const int64_t tasks = (count + grain - 1) / grain;
  if (tasks <= 1) {
    // On the calling thread, as at::parallel_for runs a single task: the
    // body's own parallel loops (the GEMM's) then stay on it too.
    at::parallel_for(0, count, std::max<int64_t>(1, count), body);
    return;
  }
  // Share t is [begin, end), packed as end << 32 | begin and claimed an
  // item at a time at either end by compare-and-swap.
  std::vector<std::atomic<uint64_t>> shares(tasks);
  for (int64_t t = 0; t < tasks; ++t) {
    const uint64_t begin = t * count / tasks, end = (t + 1) * count / tasks;
    shares[t].store(end << 32 | begin, std::memory_order_relaxed);
  }
  const auto claim = [&](int64_t t, bool front) -> int64_t {
    uint64_t s = shares[t].load(std::memory_order_relaxed);
    for (;;) {
      const uint64_t begin = s & 0xffffffffu, end = s >> 32;
      if (begin >= end) return -1;
      const uint64_t next = front ? (end << 32 | (begin + 1)) : ((end - 1) << 32 | begin);
      if (shares[t].compare_exchange_weak(s, next, std::memory_order_relaxed)) {
        return static_cast<int64_t>(front ? begin : end - 1);
      }
    }
  };
  const at::ThreadLocalState state;
  at::parallel_for(0, tasks, 1, [&](int64_t first, int64_t last) {
    at::ThreadLocalStateGuard guard(state);
    for (int64_t t = first; t < last; ++t) {
      for (int64_t i = claim(t, true); i >= 0; i = claim(t, true)) body(i, i + 1);
    }
    for (int64_t u = 1; u < tasks; ++u) {
      const int64_t t = (last - 1 + u) % tasks;
      for (int64_t i = claim(t, false); i >= 0; i = claim(t, false)) body(i, i + 1);
    }
  });
}

}  // namespace custom_conv

// The scratch pool of scratch.h.
//
// Bounds: the pool keeps at most kMaxPooledBuffers free buffers, and no more
// bytes than were ever in use at once (the largest moment of the process's
// scratch): a buffer given back past either bound frees the pool's smallest.
//
// Under AddressSanitizer (make sanitize) a kept buffer is poisoned, and only
// the bytes a tensor asked for are unpoisoned while it lives, so that reads
// past a scratch tensor's end or after its death are caught as they would be
// on memory of its own.
#include "scratch.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>

#include <sys/mman.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#else
#define ASAN_POISON_MEMORY_REGION(addr, size) ((void)(addr), (void)(size))
#define ASAN_UNPOISON_MEMORY_REGION(addr, size) ((void)(addr), (void)(size))
#endif

namespace custom_conv {
namespace {

constexpr size_t kMaxPooledBuffers = 16;
constexpr int64_t kAlignment = 64;
// Smaller temporaries come from at::empty: malloc keeps chunks this small
// for the next call itself.
constexpr int64_t kMinPooledBytes = int64_t{1} << 18;
constexpr int64_t kHugePage = int64_t{1} << 21;

// The thread a buffer was last taken by: its lines may still sit in that
// thread's core's caches, dirty.
using Owner = const void*;

Owner this_thread() {
  static thread_local const char token = 0;
  return &token;
}

struct Buffer {
  void* data;
  int64_t bytes;
  Owner owner;
};

// A buffer back to the system (unpoisoned first: the allocator reuses it).
void release(void* data, int64_t bytes) {
  ASAN_UNPOISON_MEMORY_REGION(data, static_cast<size_t>(bytes));
  std::free(data);
}

struct Pool {
  std::mutex mutex;
  std::vector<Buffer> free;  // sorted by size, smallest first
  int64_t free_bytes = 0;
  int64_t in_use = 0;      // bytes of the buffers held by live tensors
  int64_t peak = 0;        // most in use at once since scratch_stats() last asked
  int64_t high_water = 0;  // most in use at once, ever: what the pool may keep
  int64_t allocations = 0;  // buffers taken from the system

  // For `wanted` bytes, the smallest kept buffer that fits, else a new one.
  // (Taking only buffers at most twice the size asked, so that small
  // requests would leave the large buffers to large ones, made VGG-16's
  // training step allocate 81 buffers a step, round after round; this way
  // the pool settles within the first step.)
  Buffer take(int64_t wanted) {
    Buffer b = take_buffer((wanted + kAlignment - 1) / kAlignment * kAlignment);
    ASAN_UNPOISON_MEMORY_REGION(b.data, static_cast<size_t>(wanted));
    return b;
  }

  // Of the smallest that fit, one the same thread took last if there is
  // one: a buffer another core wrote last has to come over from that core's
  // caches as it is written again, which on a shared VM can be 8x slower
  // than from memory for minutes at a time. (Only among buffers of the
  // smallest fitting size: a thread that took a larger one of its own could
  // leave a later, larger request none, and the pool would grow.)
  Buffer take_buffer(int64_t bytes) {
    const Owner me = this_thread();
    {
      std::lock_guard<std::mutex> lock(mutex);
      auto fits = std::find_if(free.begin(), free.end(), [&](const Buffer& b) { return b.bytes >= bytes; });
      if (fits != free.end()) {
        const int64_t smallest = fits->bytes;
        for (auto b = fits; b != free.end() && b->bytes == smallest; ++b) {
          if (b->owner == me) {
            fits = b;
            break;
          }
        }
        Buffer b = *fits;
        free.erase(fits);
        free_bytes -= b.bytes;
        note_in_use(b.bytes);
        b.owner = me;
        return b;
      }
    }
    // Buffers of 2 MiB and more are asked to be backed by 2 MiB pages (where
    // the system leaves transparent huge pages to madvise): a Winograd block's
    // 16 point matrices and U of 4-16 MiB otherwise span thousands of 4 KiB
    // pages, more than the TLB holds. Measured on a Zen 4, batch 32, two
    // threads, alternating builds, fastest of 30 calls: VGG's 128-128 @16
    // weight gradient 7.9-9.0 -> 7.3-7.8 ms, 512-512 @4 forward 8.0-8.4 ->
    // 7.7-8.2, 256-256 @8 forward 6.3-6.5 -> 6.2-6.4.
    const bool huge = bytes >= kHugePage;
    const int64_t rounded = huge ? (bytes + kHugePage - 1) / kHugePage * kHugePage : bytes;
    void* data = std::aligned_alloc(huge ? kHugePage : kAlignment, static_cast<size_t>(rounded));
    TORCH_CHECK(data != nullptr, "custom_conv: out of memory for ", bytes, " bytes of scratch");
    if (huge) madvise(data, static_cast<size_t>(rounded), MADV_HUGEPAGE);
    ASAN_POISON_MEMORY_REGION(data, static_cast<size_t>(bytes));
    std::lock_guard<std::mutex> lock(mutex);
    note_in_use(bytes);
    ++allocations;
    return {data, bytes, me};
  }

  void give_back(Buffer b) {
    ASAN_POISON_MEMORY_REGION(b.data, static_cast<size_t>(b.bytes));
    std::vector<Buffer> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex);
      in_use -= b.bytes;
      free.insert(std::upper_bound(free.begin(), free.end(), b,
                                   [](const Buffer& x, const Buffer& y) { return x.bytes < y.bytes; }),
                  b);
      free_bytes += b.bytes;
      while (!free.empty() && (free.size() > kMaxPooledBuffers || free_bytes > high_water)) {
        evicted.push_back(free.front());
        free_bytes -= free.front().bytes;
        free.erase(free.begin());
      }
    }
    for (const Buffer& e : evicted) release(e.data, e.bytes);
  }

  void note_in_use(int64_t bytes) {
    in_use += bytes;
    peak = std::max(peak, in_use);
    high_water = std::max(high_water, in_use);
  }
};

Pool& pool() {
  // Never destroyed: tensors over its buffers may outlive static destruction.
  static Pool* const p = new Pool();
  return *p;
}

}  // namespace

at::Tensor scratch_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  TORCH_INTERNAL_ASSERT(options.device().is_cpu());
  const int64_t bytes = c10::multiply_integers(sizes) * static_cast<int64_t>(options.dtype().itemsize());
  if (bytes < kMinPooledBytes) return at::empty(sizes, options);
  const Buffer b = pool().take(bytes);
  return at::from_blob(
      b.data, sizes, [b](void*) { pool().give_back(b); }, options);
}

at::Tensor scratch_zeros(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return scratch_empty(sizes, options).zero_();
}

std::vector<int64_t> scratch_stats() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  const std::vector<int64_t> stats{p.free_bytes, p.in_use, p.peak, p.allocations};
  p.peak = p.in_use;
  return stats;
}

int64_t release_scratch() {
  Pool& p = pool();
  std::vector<Buffer> freed;
  {
    std::lock_guard<std::mutex> lock(p.mutex);
    freed.swap(p.free);
    p.free_bytes = 0;
    p.high_water = p.in_use;
  }
  int64_t bytes = 0;
  for (const Buffer& b : freed) {
    bytes += b.bytes;
    release(b.data, b.bytes);
  }
  return bytes;
}

}  // namespace custom_conv

// The emulator's runtime (see cuda_emulator.h): the block scheduler with its
// fibers, barrier and warp meeting points, the record of allocations that
// gpu_ptr checks against, the race check of shared memory, the asynchronous
// copies, and the custom_conv_emulated library: the
// kernel ops' schemas (the CUDA sources register their kernels for them, on
// CPU tensors) and the ops tests use to drive the emulator.
#include "cuda_emulator.h"

#include "../../csrc/schemas.h"

#include <c10/core/CPUAllocator.h>

#include <ucontext.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

namespace custom_conv {
namespace gpu {
namespace emulator {
namespace {

// ------------------------------------------------------------ allocations

struct Allocation {
  uintptr_t end;
  c10::DataPtr inner;  // the wrapped allocator's, freed with this entry
};
std::mutex allocations_mutex;
std::map<uintptr_t, Allocation> allocations;  // by first byte
c10::Allocator* wrapped = nullptr;  // the CPU allocator the tracker wraps

// Wraps the CPU allocator and records every live allocation, so that a raw
// pointer handed to a kernel can be traced back to its bounds. Its data
// pointers are "simple" (context == data), as some of torch's CPU kernels
// require of the CPU allocator.
class TrackingAllocator final : public c10::Allocator {
 public:
  explicit TrackingAllocator(c10::Allocator* inner) : inner_(inner) {}

  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr data = inner_->allocate(n);
    void* p = data.get();
    if (n == 0 || p == nullptr) {
      return data;
    }
    const c10::Device device = data.device();
    {
      const std::lock_guard<std::mutex> lock(allocations_mutex);
      Allocation& a = allocations[reinterpret_cast<uintptr_t>(p)];
      // An entry already there was freed behind our back (raw_deallocate
      // through the plain allocator, after tracking stopped): forget it
      // without freeing its memory again.
      a.inner.release_context();
      a = {reinterpret_cast<uintptr_t>(p) + n, std::move(data)};
    }
    return {p, p, &release, device};
  }

  // For raw_allocate / raw_deallocate, which oneDNN's buffers use.
  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  c10::Allocator* inner() const { return inner_; }

 private:
  // Also receives, through raw_deallocate, memory the wrapped allocator
  // gave out before tracking began (oneDNN frees through whichever CPU
  // allocator is current): that goes back to it.
  static void release(void* p) {
    c10::DataPtr inner;  // freed after the lock is released
    {
      const std::lock_guard<std::mutex> lock(allocations_mutex);
      auto it = allocations.find(reinterpret_cast<uintptr_t>(p));
      if (it != allocations.end()) {
        inner = std::move(it->second.inner);
        allocations.erase(it);
        return;
      }
    }
    wrapped->raw_deleter()(p);
  }

  c10::Allocator* inner_;
};

std::unique_ptr<TrackingAllocator> tracker;

// ------------------------------------------------------------- scheduler

constexpr size_t kStackBytes = 256 * 1024;

constexpr int kWarpSize = 32;

enum class FiberState { kReady, kAtBarrier, kAtWarp, kDone };

// Where the lanes of one warp meet: the operation the first lane to arrive
// named, and what each lane brought.
struct WarpGate {
  const char* op = nullptr;
  unsigned lanes = 0;    // the lanes it waits for
  unsigned arrived = 0;  // the lanes there
  WarpCombine combine = nullptr;
  WarpExchange exchange{};
};

// A cp.async in flight: its destination and the bytes it will write.
struct AsyncCopy {
  SharedPtr<char> dst;
  int64_t count;
  size_t element_bytes;
  unsigned char bytes[16];
};

struct ThreadCopies {
  std::vector<AsyncCopy> open;                   // since the last commit
  std::deque<std::vector<AsyncCopy>> committed;  // oldest first
};

// The launch running on this OS thread.
struct Scheduler {
  const char* kernel = nullptr;
  dim3 block;
  size_t dynamic_shared_bytes = 0;
  const std::function<void()>* body = nullptr;
  ucontext_t main;
  std::vector<ucontext_t> contexts;
  std::vector<std::unique_ptr<char[]>> stacks;
  std::vector<FiberState> states;
  int64_t threads = 0;  // of a block
  std::vector<WarpGate> warps;
  std::vector<uint64_t> warp_syncs;  // __syncwarp()s each warp has completed
  std::vector<ThreadCopies> copies;
  int64_t current = -1;
  uint64_t epoch = 0;
  int64_t error_count = 0;
  std::vector<std::string> errors;  // the first few
};

thread_local Scheduler scheduler;
thread_local std::vector<std::string> launch_log;
LaunchLimits current_limits;

dim3 unflatten(int64_t i, dim3 size) {
  return dim3(static_cast<unsigned int>(i % size.x), static_cast<unsigned int>(i / size.x % size.y),
              static_cast<unsigned int>(i / (static_cast<int64_t>(size.x) * size.y)));
}

// Writes a copy's bytes into shared memory: now a write by this thread.
void land(const AsyncCopy& copy) {
  for (int64_t i = 0; i < copy.count; ++i) {
    Shadow& shadow = copy.dst.shadow[i];
    shadow.in_flight = -1;
    shared_access(shadow, true, copy.dst.element + i, copy.dst.array);
  }
  std::memcpy(copy.dst.value, copy.bytes, copy.count * copy.element_bytes);
}

void land_all(ThreadCopies& copies) {
  while (!copies.committed.empty()) {
    for (const AsyncCopy& c : copies.committed.front()) {
      land(c);
    }
    copies.committed.pop_front();
  }
  for (const AsyncCopy& c : copies.open) {
    land(c);
  }
  copies.open.clear();
}

void fiber_main() {
  Scheduler& s = scheduler;
  try {
    (*s.body)();
    // Copies still in flight land after the thread returns, on the GPU too.
    land_all(s.copies[s.current]);
  } catch (const std::exception& e) {
    report(std::string("the kernel threw: ") + e.what());
  }
  s.states[s.current] = FiberState::kDone;
  // Returning resumes uc_link, the scheduler.
}

const char* state_name(FiberState state) {
  switch (state) {
    case FiberState::kReady: return "runs";
    case FiberState::kAtBarrier: return "waits at __syncthreads()";
    case FiberState::kAtWarp: return "waits at a warp operation";
    case FiberState::kDone: return "has returned";
  }
  return "?";
}

// Lanes wait at a warp operation that some lane of theirs will never reach:
// reports each such warp, naming the lanes missing and where they are.
void report_stuck_warps() {
  Scheduler& s = scheduler;
  for (int64_t w = 0; w < static_cast<int64_t>(s.warps.size()); ++w) {
    const WarpGate& gate = s.warps[w];
    if (gate.arrived == 0) {
      continue;
    }
    std::ostringstream what;
    what << "lanes of warp " << w << " wait at " << gate.op << " for lanes that never arrive:";
    for (int lane = 0; lane < kWarpSize; ++lane) {
      if ((gate.lanes >> lane & 1u) && !(gate.arrived >> lane & 1u)) {
        const int64_t t = w * kWarpSize + lane;
        what << " lane " << lane << " "
             << (t < s.threads ? state_name(s.states[t]) : "does not exist (the block ends before it)") << ";";
      }
    }
    int first = 0;
    while (!(gate.arrived >> first & 1u)) {
      ++first;
    }
    as_thread(w * kWarpSize + first, [&] { report(what.str()); });
  }
}

// Forgets the copies of an abandoned block, so that its shared memory is
// not in flight for the next.
void drop_copies() {
  Scheduler& s = scheduler;
  for (ThreadCopies& c : s.copies) {
    for (auto& group : c.committed) {
      for (const AsyncCopy& copy : group) {
        for (int64_t i = 0; i < copy.count; ++i) copy.dst.shadow[i].in_flight = -1;
      }
    }
    for (const AsyncCopy& copy : c.open) {
      for (int64_t i = 0; i < copy.count; ++i) copy.dst.shadow[i].in_flight = -1;
    }
    c = ThreadCopies{};
  }
}

// Runs one block to completion: every ready fiber until it waits or ends;
// again while a warp operation has released some; then, if any waits at
// the barrier, all of them again.
void run_block(int64_t threads) {
  Scheduler& s = scheduler;
  for (int64_t t = 0; t < threads; ++t) {
    if (static_cast<int64_t>(s.stacks.size()) <= t) {
      s.stacks.emplace_back(new char[kStackBytes]);
    }
    ucontext_t& c = s.contexts[t];
    getcontext(&c);
    c.uc_stack.ss_sp = s.stacks[t].get();
    c.uc_stack.ss_size = kStackBytes;
    c.uc_link = &s.main;
    makecontext(&c, fiber_main, 0);
    s.states[t] = FiberState::kReady;
  }
  const int64_t warps = (threads + kWarpSize - 1) / kWarpSize;
  s.warps.assign(warps, WarpGate{});
  s.warp_syncs.assign(warps, 0);
  ++s.epoch;
  for (;;) {
    for (int64_t t = 0; t < threads; ++t) {
      if (s.states[t] != FiberState::kReady) {
        continue;
      }
      s.current = t;
      threadIdx = unflatten(t, s.block);
      swapcontext(&s.main, &s.contexts[t]);
    }
    const auto count = [&](FiberState state) {
      return std::count(s.states.begin(), s.states.begin() + threads, state);
    };
    if (count(FiberState::kReady) > 0) {
      continue;
    }
    if (count(FiberState::kAtWarp) > 0) {
      // No thread can move: the block would hang on the GPU. Its fibers are
      // left where they stopped (their stacks are reused by the next block).
      report_stuck_warps();
      drop_copies();
      break;
    }
    if (count(FiberState::kAtBarrier) == 0) {
      break;
    }
    // Every thread has reached the barrier or returned (a returned thread
    // counts as arrived, as on the GPU): release them into a new epoch.
    ++s.epoch;
    for (int64_t t = 0; t < threads; ++t) {
      if (s.states[t] == FiberState::kAtBarrier) {
        s.states[t] = FiberState::kReady;
      }
    }
  }
  s.current = -1;
}

std::string where() {
  const Scheduler& s = scheduler;
  std::ostringstream w;
  w << s.kernel << ", block (" << blockIdx.x << ", " << blockIdx.y << ", " << blockIdx.z << "), thread ("
    << threadIdx.x << ", " << threadIdx.y << ", " << threadIdx.z << ")";
  return w.str();
}

}  // namespace

LaunchLimits& limits() {
  return current_limits;
}

void report(const std::string& what) {
  Scheduler& s = scheduler;
  ++s.error_count;
  std::string error = where() + ": " + what;
  if (s.errors.size() < 8 && std::find(s.errors.begin(), s.errors.end(), error) == s.errors.end()) {
    s.errors.push_back(std::move(error));
  }
}

Range allocation_of(const void* address) {
  const auto a = reinterpret_cast<uintptr_t>(address);
  const std::lock_guard<std::mutex> lock(allocations_mutex);
  auto it = allocations.upper_bound(a);
  if (it == allocations.begin()) {
    return {};
  }
  --it;
  if (a >= it->second.end) {
    return {};
  }
  return {it->first, it->second.end, true};
}

void shared_access(Shadow& shadow, bool write, int64_t element, const char* array) {
  const Scheduler& s = scheduler;
  const int64_t t = s.current;
  const int64_t warp = t / kWarpSize;
  const uint64_t syncs = s.warp_syncs[warp];
  if (shadow.in_flight >= 0) {
    std::ostringstream what;
    what << "shared memory element " << element << " of " << array << " is " << (write ? "written" : "read")
         << " while a cp.async to it (from thread " << shadow.in_flight
         << ") is still in flight: no cp_async_wait covers it";
    report(what.str());
  }
  if (shadow.epoch != s.epoch) {
    shadow = Shadow{s.epoch, -1, -1, -1, 0, 0, shadow.in_flight};
  }
  // Another thread's access is ordered before this one by the barrier (a
  // new epoch, above) or, within a warp, by a __syncwarp() since.
  const auto unordered = [&](int64_t other_warp, uint64_t other_syncs) {
    return other_warp != warp || other_syncs == syncs;
  };
  const bool written_by_other =
      shadow.writer >= 0 && shadow.writer != t && unordered(shadow.writer / kWarpSize, shadow.writer_sync);
  const bool read_by_other = (shadow.reader == -2 || (shadow.reader >= 0 && shadow.reader != t)) &&
                             unordered(shadow.reader_warp, shadow.reader_sync);
  if (written_by_other || (write && read_by_other)) {
    const int64_t other = written_by_other ? shadow.writer : shadow.reader;
    std::ostringstream what;
    what << "shared memory race on element " << element << " of " << array << ": this thread "
         << (write ? "writes" : "reads") << " it, and since the last barrier "
         << (other >= 0 ? "thread " + std::to_string(other) : std::string("several threads"))
         << (written_by_other ? " wrote" : " read") << " it";
    report(what.str());
  }
  if (write) {
    shadow.writer = t;
    shadow.writer_sync = syncs;
  } else {
    if (shadow.reader == -1 || shadow.reader == t) {
      shadow.reader = t;
      shadow.reader_warp = warp;
    } else {
      shadow.reader = -2;
      shadow.reader_warp = shadow.reader_warp == warp ? warp : -2;
    }
    shadow.reader_sync = std::max(shadow.reader_sync, syncs);
  }
}

void as_thread(int64_t t, const std::function<void()>& fn) {
  Scheduler& s = scheduler;
  const int64_t saved = s.current;
  const uint3 saved_index = threadIdx;
  s.current = t;
  threadIdx = unflatten(t, s.block);
  fn();
  s.current = saved;
  threadIdx = saved_index;
}

void warp_collective(const char* op, unsigned mask, const void* in, void* out, WarpCombine combine) {
  Scheduler& s = scheduler;
  TORCH_INTERNAL_ASSERT(s.current >= 0, op, " outside a kernel");
  const int64_t t = s.current;
  const int64_t warp = t / kWarpSize;
  const int lane = static_cast<int>(t % kWarpSize);
  const int64_t present = std::min<int64_t>(kWarpSize, s.threads - warp * kWarpSize);
  const unsigned existing = present == kWarpSize ? ~0u : (1u << present) - 1u;
  const unsigned lanes = mask == 0 ? existing : mask;
  if (!(lanes >> lane & 1u)) {
    report(std::string(op) + ": the calling lane is not in its own mask");
  }
  WarpGate& gate = s.warps[warp];
  if (gate.arrived == 0) {
    gate.op = op;
    gate.lanes = lanes | 1u << lane;
    gate.combine = combine;
  } else if (std::strcmp(gate.op, op) != 0 || gate.lanes != (lanes | 1u << lane)) {
    std::ostringstream what;
    what << "lanes of one warp meet at different warp operations: " << op << " (mask " << std::hex << lanes
         << ") here, " << gate.op << " (mask " << gate.lanes << ") in another lane";
    report(what.str());
  }
  gate.exchange.in[lane] = in;
  gate.exchange.out[lane] = out;
  gate.arrived |= 1u << lane;
  if ((gate.arrived & gate.lanes) != gate.lanes) {
    s.states[t] = FiberState::kAtWarp;
    swapcontext(&s.contexts[t], &s.main);
    return;  // released by the last lane, its result in `out`
  }
  // The last lane: every result at once, then the others go on.
  WarpExchange exchange = gate.exchange;
  exchange.lanes = gate.arrived;
  exchange.first_thread = warp * kWarpSize;
  const WarpCombine run_combine = gate.combine;
  const unsigned arrived = gate.arrived;
  gate = WarpGate{};
  run_combine(exchange);
  for (int other = 0; other < kWarpSize; ++other) {
    if ((arrived >> other & 1u) && other != lane) {
      s.states[warp * kWarpSize + other] = FiberState::kReady;
    }
  }
}

void async_copy(SharedPtr<char> dst, int64_t count, size_t element_bytes, const void* bytes) {
  Scheduler& s = scheduler;
  if (dst.available < count || (dst.element * static_cast<int64_t>(element_bytes)) % 16 != 0) {
    report("cp.async: the shared destination (element " + std::to_string(dst.element) + " of " + dst.array +
           ") is not 16-byte aligned or its 16 bytes leave the array");
    return;
  }
  for (int64_t i = 0; i < count; ++i) {
    shared_access(dst.shadow[i], true, dst.element + i, dst.array);
    dst.shadow[i].in_flight = s.current;
  }
  AsyncCopy copy{dst, count, element_bytes, {}};
  std::memcpy(copy.bytes, bytes, count * element_bytes);
  s.copies[s.current].open.push_back(copy);
}

void async_commit() {
  ThreadCopies& c = scheduler.copies[scheduler.current];
  c.committed.push_back(std::move(c.open));
  c.open.clear();
}

void async_wait(int groups_left) {
  ThreadCopies& c = scheduler.copies[scheduler.current];
  while (static_cast<int64_t>(c.committed.size()) > groups_left) {
    for (const AsyncCopy& copy : c.committed.front()) {
      land(copy);
    }
    c.committed.pop_front();
  }
}

void check_dynamic_shared(size_t bytes) {
  if (bytes > scheduler.dynamic_shared_bytes) {
    std::ostringstream what;
    what << "the kernel takes " << bytes << " bytes of dynamic shared memory; its launch gave "
         << scheduler.dynamic_shared_bytes;
    report(what.str());
  }
}

void run(const char* name, dim3 grid, dim3 block, size_t dynamic_shared_bytes, const std::function<void()>& thread) {
  Scheduler& s = scheduler;
  TORCH_CHECK(s.current < 0, "CUDA emulator: ", name, " launched from inside a kernel");
  const int64_t threads = static_cast<int64_t>(block.x) * block.y * block.z;
  const int64_t blocks = static_cast<int64_t>(grid.x) * grid.y * grid.z;
  TORCH_CHECK(threads >= 1 && threads <= 1024 && block.z <= 64,
              "CUDA emulator: ", name, ": invalid block (", block.x, ", ", block.y, ", ", block.z, ")");
  TORCH_CHECK(blocks >= 1 && grid.x <= 0x7fffffffu && grid.y <= current_limits.max_grid_yz &&
                  grid.z <= current_limits.max_grid_yz,
              "CUDA emulator: ", name, ": invalid grid (", grid.x, ", ", grid.y, ", ", grid.z,
              "); gridDim.y and .z may be at most ", current_limits.max_grid_yz);
  {
    std::ostringstream entry;
    entry << name << " grid (" << grid.x << ", " << grid.y << ", " << grid.z << ") block (" << block.x << ", "
          << block.y << ", " << block.z << ")";
    if (launch_log.size() < 100000) {
      launch_log.push_back(entry.str());
    }
  }
  s.kernel = name;
  s.block = block;
  s.dynamic_shared_bytes = dynamic_shared_bytes;
  s.body = &thread;
  s.contexts.resize(threads);
  s.states.resize(threads);
  s.threads = threads;
  s.copies.assign(threads, ThreadCopies{});
  s.error_count = 0;
  s.errors.clear();
  gridDim = grid;
  blockDim = block;
  for (int64_t b = 0; b < blocks; ++b) {
    blockIdx = unflatten(b, grid);
    run_block(threads);
  }
  if (s.error_count > 0) {
    std::ostringstream message;
    message << "CUDA emulator: " << s.error_count << " error(s) in " << name << ":";
    for (const std::string& e : s.errors) {
      message << "\n  " << e;
    }
    if (s.error_count > static_cast<int64_t>(s.errors.size())) {
      message << "\n  ...";
    }
    TORCH_CHECK(false, message.str());
  }
}

}  // namespace emulator
}  // namespace gpu
}  // namespace custom_conv

void __syncthreads() {
  using namespace custom_conv::gpu::emulator;
  Scheduler& s = scheduler;
  TORCH_INTERNAL_ASSERT(s.current >= 0, "__syncthreads() outside a kernel");
  s.states[s.current] = FiberState::kAtBarrier;
  swapcontext(&s.contexts[s.current], &s.main);
}

namespace {

// Counts the warp's __syncwarp()s: accesses on either side of one are
// ordered for its lanes (shared_access).
void count_syncwarp(const custom_conv::gpu::emulator::WarpExchange& x) {
  using namespace custom_conv::gpu::emulator;
  ++scheduler.warp_syncs[x.first_thread / kWarpSize];
}

}  // namespace

void __syncwarp(unsigned mask) {
  custom_conv::gpu::emulator::warp_collective("__syncwarp", mask, nullptr, nullptr, &count_syncwarp);
}

namespace {

using namespace custom_conv::gpu;

// Sets the limits launch plans see; returns the previous ones.
std::vector<int64_t> set_limits(int64_t multiprocessors, int64_t max_grid_yz, int64_t column_budget,
                                int64_t narrow_index_limit) {
  LaunchLimits& l = emulator::limits();
  std::vector<int64_t> previous{l.multiprocessors, l.max_grid_yz, l.column_budget, l.narrow_index_limit};
  TORCH_CHECK(multiprocessors >= 1 && max_grid_yz >= 1 && column_budget >= 1 && narrow_index_limit >= 1,
              "limits must be positive");
  l = {multiprocessors, max_grid_yz, column_budget, narrow_index_limit};
  return previous;
}

// Starts or stops recording CPU allocations (the CPU allocator is wrapped
// meanwhile). Kernels may only be given memory allocated while it is on.
void track_allocations(bool on) {
  using emulator::tracker;
  if (on) {
    TORCH_CHECK(!tracker, "allocations are already tracked");
    emulator::wrapped = c10::GetCPUAllocator();
    tracker = std::make_unique<emulator::TrackingAllocator>(emulator::wrapped);
    c10::SetCPUAllocator(tracker.get());
    TORCH_CHECK(c10::GetCPUAllocator() == tracker.get(), "could not replace the CPU allocator");
  } else if (tracker) {
    c10::SetCPUAllocator(tracker->inner());
    // Memory allocated meanwhile still points at the tracker's release
    // function: the tracker object itself is kept.
    tracker.release();
  }
}

// The launches since the last call, one line each: kernel, grid, block.
std::vector<std::string> take_launch_log() {
  std::vector<std::string> log;
  log.swap(emulator::launch_log);
  return log;
}

}  // namespace

TORCH_LIBRARY(custom_conv_emulated, m) {
  custom_conv::define_kernel_ops(m);
  m.def("set_limits(int multiprocessors, int max_grid_yz, int column_budget, int narrow_index_limit) -> int[]",
        &set_limits);
  m.def("track_allocations(bool on) -> ()", &track_allocations);
  m.def("take_launch_log() -> str[]", &take_launch_log);
}

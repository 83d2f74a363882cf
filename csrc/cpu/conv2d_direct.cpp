// The direct route: convolution on the register-blocked kernels of direct/
// (see direct/kernels.h for how they compute). This file owns the tensors,
// the packing of weights and inputs into the kernels' layouts, the scratch
// buffers and the threads. Which layers take this route is decided by the
// chooser (../conv2d_algorithm.cpp), from direct_forward_work below.
#include "conv2d_routes.h"
#include "direct/kernels.h"
#include "isa.h"
#include "parallel.h"
#include "scratch.h"
#include "phase_planes.h"
#include "transpose.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/StringUtil.h>

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

namespace custom_conv {
namespace {

// One step of the kernel's reduction over the taps: which tap of the
// layer's weights it multiplies, and where, relative to an output's first
// value, it reads the padded plane (row dy, column dx, before the stride).
struct DirectTap {
  int64_t weight_tap, dy, dx;
};

// A convolution as the direct forward kernel sees it: the forward pass, or
// one phase of the input gradient (the output gradient as input). Each input
// channel is read from its phase planes (phase_planes.h), which make any
// stride a stride-1 read; `taps` lists the reduction's taps in the order
// they are summed.
struct DirectProblem {
  int64_t batch, in_channels, in_h, in_w, pad_h, pad_w, stride_h, stride_w;
  int64_t groups, cin, cout, out_h, out_w;
  std::vector<DirectTap> taps;
  Phases phases() const { return phases_of(in_h, in_w, pad_h, pad_w, stride_h, stride_w); }
};

// How a problem's outputs are cut into tiles of `tile` outputs: along the
// extended numbering, or aligned to rows when that computes fewer
// non-outputs; and the number of tiles.
struct Tiling {
  int64_t row_tiles, count;
};

// With run_lanes, tiles of tile / run_lanes runs of run_lanes outputs, each
// within a row (direct::ForwardBlocking).
Tiling tiling(const DirectProblem& p, int64_t tile, int64_t run_lanes = 0) {
  if (run_lanes > 0) {
    const int64_t runs = p.out_h * ceil_div(p.out_w, run_lanes);
    return {0, ceil_div(runs, tile / run_lanes)};
  }
  const int64_t extended = ceil_div((p.out_h - 1) * p.phases().w + p.out_w, tile);
  const int64_t per_row = ceil_div(p.out_w, tile);
  if (per_row * p.out_h <= extended) return {per_row, per_row * p.out_h};
  return {0, extended};
}

// Which forward blocking runs a problem: the channel-vectorised one that
// fits its output channels (direct::forward_blocking), or one with the
// outputs along the lanes, whichever this model of the kernels' cycles finds
// cheaper. A step of the reduction issues rows x vectors multiply-adds and
// rows + vectors + 1 loads (a run's vector load usually spans two cache
// lines: twice), and the core retires two of either per cycle, so a step
// costs the larger count. Writing a tile out costs about a cycle and a half
// per value for the channel-vectorised tiles (scattered to their pixels one
// by one) and two per vector for runs. On 9 layers from LeNet-5, VGG-16 and
// the ResNets it picked the fastest blocking, or one within 5% of it, at
// AVX-512 (and on 8 at AVX2); it overstates a loss at times (2.1x for runs
// on 8x8 planes, measured 1.5x), never the order.
// The tiles a blocking computes, in whole tiles' worth: the runs kernel
// computes a plane's last tile only as far as its runs go.
template <typename T>
double tiles_computed(const direct::ForwardBlocking<T>& b, const DirectProblem& p) {
  if (b.run_lanes > 0) {
    return static_cast<double>(p.out_h * ceil_div(p.out_w, b.run_lanes)) / static_cast<double>(b.tile / b.run_lanes);
  }
  return static_cast<double>(tiling(p, b.tile).count);
}

template <typename T>
double forward_cycles(const direct::ForwardBlocking<T>& b, const DirectProblem& p) {
  const bool runs = b.run_lanes > 0;
  const double rows = static_cast<double>(runs ? b.nb : b.tile), vectors = static_cast<double>(b.vectors);
  const double step = std::max(rows * vectors, rows + (runs ? 2 : 1) * vectors + 1);
  const double store = runs ? 2.0 * rows * vectors : 1.5 * static_cast<double>(b.tile * b.nb);
  const double steps = static_cast<double>(p.cin * static_cast<int64_t>(p.taps.size()));
  return tiles_computed(b, p) * static_cast<double>(ceil_div(p.cout, b.nb)) * (steps * step + store);
}

template <typename T>
const direct::ForwardBlocking<T>& choose_forward(const direct::Kernels<T>& k, const DirectProblem& p) {
  const direct::ForwardBlocking<T>* best = &direct::forward_blocking(k, p.cout);
  double best_cycles = forward_cycles(*best, p);
  for (int64_t i = 0; i < k.runs_count; ++i) {
    const double cycles = forward_cycles(k.runs[i], p);
    if (cycles < best_cycles) {
      best = &k.runs[i];
      best_cycles = cycles;
    }
  }
  return *best;
}

// The work of the forward kernel on a problem: outputs, and the values it
// computes (blocks of nb output channels times tiles of `tile` outputs).
template <typename T>
DirectWork forward_work(const direct::Kernels<T>& k, const DirectProblem& p) {
  const direct::ForwardBlocking<T>& b = choose_forward(k, p);
  const double computed = tiles_computed(b, p) * static_cast<double>(b.tile * ceil_div(p.cout, b.nb) * b.nb);
  return {static_cast<double>(p.out_h * p.out_w * p.cout), computed};
}

DirectProblem forward_problem(const Conv2dGeometry& g) {
  DirectProblem p{g.batch, g.in_channels, g.in_h, g.in_w, g.pad_h, g.pad_w, g.stride_h, g.stride_w,
                  g.groups, g.in_channels_per_group(), g.out_channels_per_group(), g.out_h, g.out_w, {}};
  for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
    for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
      p.taps.push_back({ki * g.kernel_w + kj, ki * g.dilation_h, kj * g.dilation_w});
    }
  }
  return p;
}

// The input gradient, one phase at a time: the lecture's rule (the zero-padded
// output gradient convolved with the kernel rotated by 180 degrees, its channel
// axes swapped) for every input position, read as a stride-1 correlation.
// Input row ih = oh * s - pad + ki * dil receives from tap ki the output row
// oh = (ih + pad - ki * dil) / s when that divides evenly, so the rows of
// one phase a = ih mod s, ih = a + s * y, see only the taps with
// (a + pad - ki * dil) mod s == 0, each at output row y + c_ki with c_ki =
// (a + pad - ki * dil) / s: a stride-1 correlation of the output gradient,
// zero-padded by enough rows that every c_ki + pad lands inside, with those
// taps. Stride 1 has one phase, the whole input gradient. Taps are summed in
// ascending (row, column) offset: for stride 1 that is the rotated kernel in
// its own order.
struct GradPhase {
  int64_t a, b, rows, cols;  // input rows a + s_h * y, y < rows; columns likewise
};

struct PhaseAxis {
  std::vector<std::pair<int64_t, int64_t>> taps;  // (k, c_k), c_k ascending
  int64_t pad;
};

PhaseAxis phase_axis(int64_t a, int64_t kernel, int64_t dil, int64_t pad, int64_t stride, int64_t positions,
                     int64_t out_size) {
  PhaseAxis axis{{}, 0};
  for (int64_t k = kernel - 1; k >= 0; --k) {  // c_k grows as k falls
    const int64_t from = a + pad - k * dil;
    if (from % stride == 0) axis.taps.emplace_back(k, from / stride);
  }
  if (!axis.taps.empty()) {
    axis.pad = std::max<int64_t>({0, -axis.taps.front().second, positions + axis.taps.back().second - out_size});
  }
  return axis;
}

// The phases of the input gradient: (a, b) for a < s_h, b < s_w, each with
// the input rows and columns it covers.
std::vector<GradPhase> grad_phases(const Conv2dGeometry& g) {
  std::vector<GradPhase> phases;
  for (int64_t a = 0; a < std::min(g.stride_h, g.in_h); ++a) {
    for (int64_t b = 0; b < std::min(g.stride_w, g.in_w); ++b) {
      phases.push_back({a, b, ceil_div(g.in_h - a, g.stride_h), ceil_div(g.in_w - b, g.stride_w)});
    }
  }
  return phases;
}

// Phase `ph` of the input gradient as a stride-1 problem on the output
// gradient padded by the most any phase needs, so that one padded copy of a
// sample serves every phase.
DirectProblem input_grad_problem(const Conv2dGeometry& g, const GradPhase& ph) {
  int64_t pad_h = 0, pad_w = 0;
  for (const GradPhase& q : grad_phases(g)) {
    pad_h = std::max(pad_h, phase_axis(q.a, g.kernel_h, g.dilation_h, g.pad_h, g.stride_h, q.rows, g.out_h).pad);
    pad_w = std::max(pad_w, phase_axis(q.b, g.kernel_w, g.dilation_w, g.pad_w, g.stride_w, q.cols, g.out_w).pad);
  }
  const PhaseAxis rows = phase_axis(ph.a, g.kernel_h, g.dilation_h, g.pad_h, g.stride_h, ph.rows, g.out_h);
  const PhaseAxis cols = phase_axis(ph.b, g.kernel_w, g.dilation_w, g.pad_w, g.stride_w, ph.cols, g.out_w);
  DirectProblem p{g.batch, g.out_channels, g.out_h, g.out_w, pad_h, pad_w, 1, 1,
                  g.groups, g.out_channels_per_group(), g.in_channels_per_group(), ph.rows, ph.cols, {}};
  for (const auto& [ki, ci] : rows.taps) {
    for (const auto& [kj, cj] : cols.taps) {
      p.taps.push_back({ki * g.kernel_w + kj, ci + pad_h, cj + pad_w});
    }
  }
  return p;
}

// Weights in the kernel's order, [group][output block][ci * taps + tap][nb]:
// each step of the reduction loads nb output channels' weights at once.
// Channels past the last of a block are zero. With `input_grad`, the
// problem's output channel c and input channel i are the layer's input
// channel c and output channel i (the channel axes swapped).
//
// Written a step's nb lanes at a time, over the threads by (group, block,
// input channel): this runs on every call, and scattering one weight at a
// time on one thread took a fifth of a small layer's forward at batch 1
// (ResNet-20's 64-64 @8) while the other thread waited.
template <typename T>
at::Tensor pack_weights(const DirectProblem& p, const T* weight, int64_t nb, bool input_grad,
                        int64_t kernel_taps, const at::TensorOptions& options) {
  const int64_t taps = static_cast<int64_t>(p.taps.size()), steps = p.cin * taps, blocks = ceil_div(p.cout, nb);
  at::Tensor packed_tensor = scratch_empty({p.groups * blocks * steps * nb}, options);
  T* packed = packed_tensor.mutable_data_ptr<T>();
  // The layer's weight is (groups * cout, cin, taps) for the forward problem
  // and (groups * cin, cout, taps) for the input gradient's: where output
  // channel o's weights for input channel i start, and how far apart o's are.
  const int64_t o_stride = (input_grad ? 1 : p.cin) * kernel_taps, i_stride = (input_grad ? p.cout : 1) * kernel_taps;
  // The forward with every tap in the weight's order: a block's steps are
  // then the transpose of its rows of the (cout, cin * taps) weight, done
  // 8 x 8 at a time in registers (transpose.h). One value at a time, each
  // load a row of the weight apart, packing took a tenth of a small layer's
  // forward at batch 1 (ResNet-20's 32-64 /2 @16: 45 us, 41 this way).
  bool natural = !input_grad && taps == kernel_taps;
  for (int64_t t = 0; natural && t < taps; ++t) natural = p.taps[t].weight_tap == t;
  if (natural) {
    at::parallel_for(0, p.groups * blocks, plane_grain(steps * nb), [&](int64_t begin, int64_t end) {
      for (int64_t block = begin; block < end; ++block) {
        const int64_t grp = block / blocks, o0 = block % blocks * nb, lanes = std::min(nb, p.cout - o0);
        T* dst = packed + block * steps * nb;
        transpose(weight + (grp * p.cout + o0) * o_stride, lanes, steps, o_stride, dst, nb);
        for (int64_t k = 0; lanes < nb && k < steps; ++k) std::fill(dst + k * nb + lanes, dst + (k + 1) * nb, T(0));
      }
    });
    return packed_tensor;
  }
  at::parallel_for(0, p.groups * blocks * p.cin, plane_grain(taps * nb), [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const int64_t i = job % p.cin, block = job / p.cin, grp = block / blocks, o0 = block % blocks * nb;
      const int64_t lanes = std::min(nb, p.cout - o0);
      const T* w = weight + grp * p.cout * p.cin * kernel_taps + o0 * o_stride + i * i_stride;
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t tap = p.taps[t].weight_tap;
        T* dst = packed + (block * steps + i * taps + t) * nb;
        for (int64_t l = 0; l < lanes; ++l) dst[l] = w[l * o_stride + tap];
        for (int64_t l = lanes; l < nb; ++l) dst[l] = T(0);
      }
    }
  });
  return packed_tensor;
}

// Per reduction step k = ci * taps + tap: where it reads the padded planes
// (pad_planes) of a group's input channels, relative to an output's
// extended position.
std::vector<int64_t> step_offsets(const DirectProblem& p) {
  const Phases phases = p.phases();
  const int64_t taps = static_cast<int64_t>(p.taps.size());
  std::vector<int64_t> koff(p.cin * taps);
  for (int64_t i = 0; i < p.cin; ++i) {
    for (int64_t t = 0; t < taps; ++t) {
      koff[i * taps + t] = i * phases.values() + phases.offset(p.taps[t].dy, p.taps[t].dx);
    }
  }
  return koff;
}

// Scratch buffers, one per thread of a parallel_for (indexed by
// at::get_thread_num()), taken up front from the scratch pool (scratch.h),
// whose peak the benchmark's scratch measurement counts.
template <typename T>
struct PerThread {
  at::Tensor buffers;
  int64_t size;
  // `zeroed`: for buffers whose untouched parts must read as zero.
  PerThread(int64_t size, const at::TensorOptions& options, bool zeroed)
      : buffers(zeroed ? scratch_zeros({at::get_num_threads(), size}, options)
                       : scratch_empty({at::get_num_threads(), size}, options)),
        size(size) {}
  T* mine() { return buffers.mutable_data_ptr<T>() + at::get_thread_num() * size; }
};

// Copies a (C, H, W) sample into the phase planes of each channel, in a
// buffer of them zeroed once (their padding, and the slack past them that
// the kernels' last tile reads, stay zero: every sample writes the same
// positions).
template <typename T>
void pad_planes(const DirectProblem& p, const T* src, T* dst) {
  copy_to_phases(src, p.phases(), p.in_channels, dst);
}

// A problem made ready to run: its blocking, its weights packed for it, the
// offsets of its reduction steps, its tiles, and their multiply-adds.
template <typename T>
struct Prepared {
  const DirectProblem& p;
  const direct::ForwardBlocking<T>& blocking;
  const at::Tensor packed;
  const std::vector<int64_t> koff;
  const Tiling tiles;
  const int64_t macs_per_tile;

  Prepared(const direct::Kernels<T>& k, const DirectProblem& p, const T* weight, bool input_grad,
           int64_t kernel_taps, const at::TensorOptions& options)
      : p(p),
        blocking(choose_forward(k, p)),
        packed(pack_weights(p, weight, blocking.nb, input_grad, kernel_taps, options)),
        koff(step_offsets(p)),
        tiles(tiling(p, blocking.tile, blocking.run_lanes)),
        macs_per_tile(p.groups * ceil_div(p.cout, blocking.nb) * blocking.nb * p.cin *
                      static_cast<int64_t>(p.taps.size()) * blocking.tile) {}

  // Tiles [begin, end) of one sample, whose padded planes are at xp, into
  // `out`: that sample's (groups * cout, out_h * out_w) outputs.
  void run_tiles(const T* xp, const T* bias, T* out, int64_t begin, int64_t end) const {
    const int64_t plane = p.phases().values(), blocks = ceil_div(p.cout, blocking.nb);
    const int64_t steps = p.cin * static_cast<int64_t>(p.taps.size());
    const T* weights = packed.const_data_ptr<T>();
    for (int64_t grp = 0; grp < p.groups; ++grp) {
      const direct::ForwardArgs<T> args{
          xp + grp * p.cin * plane, koff.data(), steps, weights + grp * blocks * steps * blocking.nb,
          bias ? bias + grp * p.cout : nullptr, out + grp * p.cout * p.out_h * p.out_w, p.cout,
          p.phases().w, p.out_h, p.out_w, tiles.row_tiles};
      blocking.run(args, begin, end);
    }
  }
};

// Runs a DirectProblem on (N, in_channels, in_h, in_w) `in` into (N, groups *
// cout, out_h, out_w) `out`. Samples are spread over the threads, each
// padding its own sample into a private buffer, so scratch memory is a few
// samples whatever the batch; with fewer samples than threads, the tiles
// of each sample are spread instead.
template <typename T>
void run_direct(const direct::Kernels<T>& k, const DirectProblem& p, const T* in, const T* weight,
                bool input_grad, int64_t kernel_taps, const T* bias, T* out, const at::TensorOptions& options) {
  const Prepared<T> prepared(k, p, weight, input_grad, kernel_taps, options);
  const int64_t tiles = prepared.tiles.count;
  const int64_t sample_in = p.in_channels * p.in_h * p.in_w, sample_out = p.groups * p.cout * p.out_h * p.out_w;
  const int64_t sample_padded = p.in_channels * p.phases().values() + prepared.blocking.tile;
  if (p.batch >= at::get_num_threads()) {
    PerThread<T> padded(sample_padded, options, /*zeroed=*/true);  // see pad_planes
    parallel_items(p.batch, prepared.macs_per_tile * tiles, [&](int64_t begin, int64_t end) {
      T* xp = padded.mine();
      for (int64_t n = begin; n < end; ++n) {
        pad_planes(p, in + n * sample_in, xp);
        prepared.run_tiles(xp, bias, out + n * sample_out, 0, tiles);
      }
    });
  } else {
    const at::Tensor padded = scratch_zeros({sample_padded}, options);  // see pad_planes
    T* xp = padded.mutable_data_ptr<T>();
    const int64_t grain = task_grain(tiles, prepared.macs_per_tile);
    for (int64_t n = 0; n < p.batch; ++n) {
      pad_planes(p, in + n * sample_in, xp);
      at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
        prepared.run_tiles(xp, bias, out + n * sample_out, begin, end);
      });
    }
  }
}

// Writes channels [c0, c1) of one phase's (C, rows, cols) values to its rows
// a + s_h * y and columns b + s_w * x of a (C, H, W) sample of the input
// gradient, or zeros there where `values` is null (a phase no tap reaches).
template <typename T>
void spread_phase(const Conv2dGeometry& g, const GradPhase& ph, const T* values, T* sample, int64_t c0,
                  int64_t c1) {
  for (int64_t c = c0; c < c1; ++c) {
    for (int64_t y = 0; y < ph.rows; ++y) {
      T* dst = sample + (c * g.in_h + ph.a + y * g.stride_h) * g.in_w + ph.b;
      if (values == nullptr) {
        for (int64_t x = 0; x < ph.cols; ++x) dst[x * g.stride_w] = T(0);
      } else {
        strided_copy<false>(values + (c * ph.rows + y) * ph.cols, dst, 0, ph.cols, g.stride_w);
      }
    }
  }
}

// The input gradient of a strided layer, phase by phase (input_grad_problem)
// sample by sample: each sample's output gradient padded once for all its
// phases. With a sample per thread, each phase is computed into a buffer the
// size of one sample's phase and spread from there over its rows and
// columns of the input gradient while both are in cache. Padding the whole
// output gradient once per phase, and spreading each phase of the whole
// batch afterwards from memory, took two fifths of ResNet-20's 16-32 /2
// input gradient. With fewer samples than threads, the tiles of all phases
// of a sample are spread over the threads at once, into one buffer holding
// every phase, and then spread by channels: a parallel loop per phase, with
// the spreading left to one thread, made the 64-64 3x3/2 @32 input gradient
// at batch 1 slower on two threads than on one (0.37 against 0.25 ms).
template <typename T>
void run_direct_phases(const direct::Kernels<T>& k, const Conv2dGeometry& g, const T* grad_output,
                       const T* weight, T* grad_input, const at::TensorOptions& options) {
  const std::vector<GradPhase> phases = grad_phases(g);
  std::vector<DirectProblem> problems;
  for (const GradPhase& ph : phases) problems.push_back(input_grad_problem(g, ph));
  std::vector<Prepared<T>> prepared;  // the phases some tap reaches
  std::vector<int64_t> prepared_of(phases.size(), -1);
  prepared.reserve(phases.size());
  int64_t slack = 0, buffer = 0, macs_per_sample = 0;
  for (size_t i = 0; i < phases.size(); ++i) {
    if (problems[i].taps.empty()) continue;
    prepared_of[i] = static_cast<int64_t>(prepared.size());
    const Prepared<T>& pr =
        prepared.emplace_back(k, problems[i], weight, /*input_grad=*/true, g.kernel_h * g.kernel_w, options);
    slack = std::max(slack, pr.blocking.tile);
    buffer = std::max(buffer, g.in_channels * phases[i].rows * phases[i].cols);
    macs_per_sample += pr.macs_per_tile * pr.tiles.count;
  }
  const DirectProblem& p = problems.front();  // every phase reads the same padded planes
  const int64_t sample_in = p.in_channels * p.in_h * p.in_w, sample_padded = p.in_channels * p.phases().values() + slack;
  const int64_t sample_out = g.in_channels * g.in_h * g.in_w;
  if (g.batch >= at::get_num_threads()) {
    PerThread<T> padded(sample_padded, options, /*zeroed=*/true), values(buffer, options, /*zeroed=*/false);
    parallel_items(g.batch, macs_per_sample, [&](int64_t begin, int64_t end) {
      T* xp = padded.mine();
      T* out = values.mine();
      for (int64_t n = begin; n < end; ++n) {
        pad_planes(p, grad_output + n * sample_in, xp);
        for (size_t i = 0; i < phases.size(); ++i) {
          const Prepared<T>* pr = prepared_of[i] >= 0 ? &prepared[prepared_of[i]] : nullptr;
          if (pr) pr->run_tiles(xp, nullptr, out, 0, pr->tiles.count);
          spread_phase(g, phases[i], pr ? out : nullptr, grad_input + n * sample_out, 0, g.in_channels);
        }
      }
    });
    return;
  }
  // Prepared phase j's values start at offset[j] of `all`; its tiles are
  // items first[j] .. first[j + 1] of the sample's.
  std::vector<int64_t> offset, first{0};
  int64_t values_total = 0;
  for (size_t i = 0; i < phases.size(); ++i) {
    if (prepared_of[i] < 0) continue;
    offset.push_back(values_total);
    values_total += g.in_channels * phases[i].rows * phases[i].cols;
    first.push_back(first.back() + prepared[prepared_of[i]].tiles.count);
  }
  const int64_t tiles = first.back();
  const at::Tensor padded = scratch_zeros({sample_padded}, options), all = scratch_empty({values_total}, options);
  T* xp = padded.mutable_data_ptr<T>();
  T* values = all.mutable_data_ptr<T>();
  for (int64_t n = 0; n < g.batch; ++n) {
    pad_planes(p, grad_output + n * sample_in, xp);
    at::parallel_for(0, tiles, task_grain(tiles, macs_per_sample / std::max<int64_t>(1, tiles)),
                     [&](int64_t begin, int64_t end) {
      for (size_t j = 0; j < prepared.size(); ++j) {
        const int64_t b = std::max(begin, first[j]), e = std::min(end, first[j + 1]);
        if (b < e) prepared[j].run_tiles(xp, nullptr, values + offset[j], b - first[j], e - first[j]);
      }
    });
    at::parallel_for(0, g.in_channels, plane_grain(g.in_h * g.in_w), [&](int64_t c0, int64_t c1) {
      for (size_t i = 0; i < phases.size(); ++i) {
        const T* v = prepared_of[i] >= 0 ? values + offset[prepared_of[i]] : nullptr;
        spread_phase(g, phases[i], v, grad_input + n * sample_out, c0, c1);
      }
    });
  }
}

// The bytes of the output gradient's and the input's rows that one chunk of
// the weight gradient's walk may hold (weight_grad_tiles in direct/loops.h):
// half of L1, so that every tile reads the chunk from there, or a single row
// where one is larger. Unchunked, ImageNet's 7x7/2 first layer read its 3 MB
// output gradient from memory once per tile (9% of the peak at AVX-512 with
// a 2 MiB L2); chunks of half of L2 ran 7% slower than these.
int64_t weight_grad_chunk_bytes() {
  return cpu_caches().l1 / 2;
}

// The weight gradient with the pixels along the lanes (direct::
// WeightGradRunsArgs), in at most kWeightPartials fixed blocks of samples:
// each block's lane sums, then its lanes added up in order into the block's
// partial, then the partials in block order.
template <typename T>
void run_weight_grad_runs(const direct::Kernels<T>& k, const Conv2dGeometry& g, const at::Tensor& input,
                          const at::Tensor& grad_output, at::Tensor& grad_weight) {
  const direct::WeightGradRunsBlocking<T>& b = *k.weight_grad_runs;
  const DirectProblem p = forward_problem(g);
  const Phases phases = p.phases();
  const int64_t Ci = p.cin, Co = p.cout, L = g.output_plane(), plane = phases.values();
  const int64_t steps = Ci * static_cast<int64_t>(p.taps.size());
  const std::vector<int64_t> koff = step_offsets(p);
  const int64_t co_blocks = ceil_div(Co, b.co), k_blocks = ceil_div(steps, b.k);
  const int64_t sums_per_group = co_blocks * k_blocks * b.co * b.k * b.lanes;
  const int64_t per_partial = g.groups * Co * steps;  // [group][co][step], a layer's weight gradient
  const int64_t blocks = std::max<int64_t>(
      1, std::min({g.batch, kWeightPartials, kPartialsBudget / std::max(per_partial, g.groups * sums_per_group)}));
  const at::Tensor partials_tensor = scratch_empty({blocks * per_partial}, input.options());
  T* partials = partials_tensor.mutable_data_ptr<T>();
  const T* x = input.const_data_ptr<T>();
  const T* go = grad_output.const_data_ptr<T>();
  const int64_t sample_in = g.in_channels * g.in_h * g.in_w, sample_padded = g.in_channels * plane + b.lanes;
  const int64_t macs_per_block = ceil_div(g.batch, blocks) * g.out_channels * steps * L;
  PerThread<T> padded(sample_padded, input.options(), /*zeroed=*/true);  // see pad_planes
  PerThread<T> lane_sums(g.groups * sums_per_group, input.options(), /*zeroed=*/false);
  parallel_items(blocks, macs_per_block, [&](int64_t begin, int64_t end) {
    T* xp = padded.mine();
    T* sums = lane_sums.mine();
    for (int64_t block = begin; block < end; ++block) {
      std::fill(sums, sums + g.groups * sums_per_group, T(0));
      for (int64_t n = block * g.batch / blocks; n < (block + 1) * g.batch / blocks; ++n) {
        pad_planes(p, x + n * sample_in, xp);
        for (int64_t grp = 0; grp < g.groups; ++grp) {
          const direct::WeightGradRunsArgs<T> args{xp + grp * Ci * plane, koff.data(), steps,
                                                   go + (n * g.groups + grp) * Co * L, Co, phases.w,
                                                   g.out_h, g.out_w, sums + grp * sums_per_group};
          b.run(args);
        }
      }
      T* partial = partials + block * per_partial;
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        for (int64_t co = 0; co < Co; ++co) {
          for (int64_t step = 0; step < steps; ++step) {
            const T* lanes = sums + grp * sums_per_group +
                             (((co / b.co) * k_blocks + step / b.k) * b.co * b.k + (co % b.co) * b.k + step % b.k) *
                                 b.lanes;
            T sum = T(0);
            for (int64_t l = 0; l < b.lanes; ++l) sum += lanes[l];
            partial[(grp * Co + co) * steps + step] = sum;
          }
        }
      }
    }
  });
  // The steps are numbered (ci, tap) as grad_weight's (co, ci, kh, kw) is.
  T* gw = grad_weight.mutable_data_ptr<T>();
  at::parallel_for(0, per_partial, kMinTaskMacs, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T sum = partials[i];
      for (int64_t blk = 1; blk < blocks; ++blk) sum += partials[blk * per_partial + i];
      gw[i] = sum;
    }
  });
}

// The weight gradient (any stride), summed over the batch in at most
// kWeightPartials fixed blocks of samples, like the im2col route.
//
// The kernel broadcasts R consecutive channels of the channels-last input.
// A single input channel (a grayscale first layer) would leave most of them
// empty, so there each kernel row's kW taps become channels: channel kj at
// position p holds the input at p + kj * dilation_w, and the kernel then
// walks only the kH rows of taps.
template <typename T>
void run_weight_grad_tiles(const direct::Kernels<T>& k, const Conv2dGeometry& g, const at::Tensor& input,
                           const at::Tensor& grad_output, at::Tensor& grad_weight) {
  const int64_t Ci = g.in_channels_per_group(), Co = g.out_channels_per_group(), L = g.output_plane();
  const int64_t kernel_taps = g.kernel_h * g.kernel_w;
  const int64_t fold = (Ci == 1 && g.kernel_w <= 16) ? g.kernel_w : 1;  // taps per channel
  const int64_t channels = Ci * fold, taps = g.kernel_h * g.kernel_w / fold;
  const int64_t nb = direct::forward_blocking(k, Co).nb;
  const direct::WeightGradBlocking<T>& blocking = direct::weight_grad_blocking(k, nb, channels);
  const int64_t R = blocking.r;
  const int64_t cpad = ceil_div(channels, R) * R, copad = ceil_div(Co, nb) * nb;
  const int64_t Hp = g.in_h + 2 * g.pad_h, Wp = g.in_w + 2 * g.pad_w, positions = Hp * Wp;
  const int64_t per_group = taps * cpad * copad, per_partial = g.groups * per_group;
  const int64_t blocks = std::max<int64_t>(1, std::min({g.batch, kWeightPartials, kPartialsBudget / per_partial}));
  const int64_t row_bytes = (g.out_w * copad + g.stride_h * Wp * cpad) * int64_t{sizeof(T)};
  const int64_t chunk_rows = std::max<int64_t>(1, weight_grad_chunk_bytes() / row_bytes);
  std::vector<int64_t> toff(taps);
  for (int64_t t = 0; t < taps; ++t) {
    const int64_t ki = t * fold / g.kernel_w, kj = t * fold % g.kernel_w;
    toff[t] = ki * g.dilation_h * Wp + kj * g.dilation_w;
  }
  const at::Tensor partials_tensor = scratch_zeros({blocks * per_partial}, input.options());
  T* partials = partials_tensor.mutable_data_ptr<T>();
  const T* x = input.const_data_ptr<T>();
  const T* go = grad_output.const_data_ptr<T>();
  const int64_t plane = g.in_h * g.in_w;
  const int64_t macs_per_block = ceil_div(g.batch, blocks) * g.out_channels * Ci * g.kernel_h * g.kernel_w * L;
  PerThread<T> xn_buffers(positions * cpad, input.options(), true), got_buffers(L * copad, input.options(), true);
  PerThread<T> unfolded_buffers(fold > 1 ? positions * Ci : 0, input.options(), true);
  parallel_items(blocks, macs_per_block, [&](int64_t begin, int64_t end) {
    // Padding positions and the channels past Ci / Co stay zero; every
    // sample overwrites the same interior positions.
    T* xn = xn_buffers.mine();
    T* got = got_buffers.mine();
    T* unfolded = unfolded_buffers.mine();
    for (int64_t block = begin; block < end; ++block) {
      for (int64_t n = block * g.batch / blocks; n < (block + 1) * g.batch / blocks; ++n) {
        for (int64_t grp = 0; grp < g.groups; ++grp) {
          const T* xs = x + (n * g.in_channels + grp * Ci) * plane;
          T* rows = fold > 1 ? unfolded : xn;
          const int64_t row_stride = fold > 1 ? Ci : cpad;
          for (int64_t h = 0; h < g.in_h; ++h) {
            transpose(xs + h * g.in_w, Ci, g.in_w, plane,
                      rows + ((h + g.pad_h) * Wp + g.pad_w) * row_stride, row_stride);
          }
          for (int64_t pos = 0; fold > 1 && pos < positions; ++pos) {
            for (int64_t ci = 0; ci < Ci; ++ci) {
              for (int64_t kj = 0; kj < fold; ++kj) {
                const int64_t from = pos + kj * g.dilation_w;
                xn[pos * cpad + ci * fold + kj] = from < positions ? unfolded[from * Ci + ci] : T(0);
              }
            }
          }
          transpose(go + (n * g.out_channels + grp * Co) * L, Co, L, L, got, copad);
          const direct::WeightGradArgs<T> args{
              xn, got, partials + block * per_partial + grp * per_group,
              toff.data(), taps, cpad, copad, Wp, g.stride_h, g.stride_w, g.out_h, g.out_w, chunk_rows};
          blocking.run(args);
        }
      }
    }
  });
  // grad_weight[grp * Co + co][ci][ki][kj] = sum over blocks, in order, of
  // partial[grp][tap][channel][co], with (tap, channel) = ((ki, kj), ci)
  // or, folded, (ki, ci * kW + kj). Row by row of the partials (all output
  // channels of one (tap, channel)), over threads: element by element on
  // one thread, their 8 blocks' values read a row apart, this took a tenth
  // of ResNet-20's 32-64 /2 weight gradient while the other threads waited.
  T* gw = grad_weight.mutable_data_ptr<T>();
  const int64_t rows = g.groups * taps * channels;
  constexpr int64_t kValuesPerSumTask = 32768;
  const int64_t grain = std::max<int64_t>(1, kValuesPerSumTask / (Co * blocks));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> sum(Co);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t grp = r / (taps * channels), tap = r / channels % taps, channel = r % channels;
      const T* row = partials + grp * per_group + (tap * cpad + channel) * copad;
      for (int64_t co = 0; co < Co; ++co) sum[co] = row[co];
      for (int64_t b = 1; b < blocks; ++b) {
        for (int64_t co = 0; co < Co; ++co) sum[co] += row[b * per_partial + co];
      }
      const int64_t ci = channel / fold, t = tap * fold + channel % fold;
      for (int64_t co = 0; co < Co; ++co) gw[((grp * Co + co) * Ci + ci) * kernel_taps + t] = sum[co];
    }
  });
}

// The weight gradient along the pixels where the tiles' lanes starve: an
// input of at most kMaxRunsWeightGradChannels channels (per group), whose
// few broadcasts per pixel the tiles pad to r = 4 or 8 and whose output
// gradient they transpose whole, on planes at least a run of lanes wide.
// Measured at batch 32 (AVX-512): 1.5-3x faster than the tiles on LeNet-5's
// first layer and on VGG's and ResNet-20's 3-channel ones; 1.1-1.6x slower
// with 6 to 32 input channels, where each tile's fixed cost and its walk
// of the whole plane for only K steps outweigh the copies it saves.
constexpr int64_t kMaxRunsWeightGradChannels = 4;

template <typename T>
void run_weight_grad(const direct::Kernels<T>& k, const Conv2dGeometry& g, const at::Tensor& input,
                     const at::Tensor& grad_output, at::Tensor& grad_weight) {
  if (k.weight_grad_runs != nullptr && g.in_channels_per_group() <= kMaxRunsWeightGradChannels &&
      g.out_w >= k.weight_grad_runs->lanes) {
    run_weight_grad_runs(k, g, input, grad_output, grad_weight);
  } else {
    run_weight_grad_tiles(k, g, input, grad_output, grad_weight);
  }
}

// Calls f(kernels) with this CPU's direct kernels for `dtype`, as the
// scalar type they compute in.
template <typename F>
void with_kernels(at::ScalarType dtype, F f) {
  const direct::Kernels<float>* k_float = dtype == at::kFloat ? direct::kernels<float>() : nullptr;
  const direct::Kernels<double>* k_double = dtype == at::kDouble ? direct::kernels<double>() : nullptr;
  TORCH_CHECK(k_float != nullptr || k_double != nullptr,
              "custom_conv: no direct kernels for ", dtype, " at the ", cpu_kernels(), " level");
  if (k_float != nullptr) f(*k_float);
  if (k_double != nullptr) f(*k_double);
}

// The forward of `p` (input_grad = false) or a phase of the input gradient
// (input_grad = true, `in` is then grad_output), into `out`.
void run(const DirectProblem& p, const at::Tensor& in, const at::Tensor& weight, const at::Tensor& bias,
         bool input_grad, at::Tensor& out) {
  if (p.batch == 0) return;
  const int64_t kernel_taps = weight.size(2) * weight.size(3);
  with_kernels(in.scalar_type(), [&](const auto& k) {
    using T = typename std::remove_reference_t<decltype(k)>::Scalar;
    run_direct(k, p, in.const_data_ptr<T>(), weight.const_data_ptr<T>(), input_grad, kernel_taps,
               bias.defined() ? bias.const_data_ptr<T>() : nullptr, out.mutable_data_ptr<T>(), in.options());
  });
}

}  // namespace

const char* conv2d_direct_refusal(const Conv2dGeometry& g, Conv2dPass pass, at::ScalarType dtype) {
  if (!direct_kernels_available(dtype)) {
    return "no direct kernels for this dtype on this CPU";
  }
  if (g.batch == 0) {
    return "empty batch";
  }
  if (g.in_channels == 0) {
    return "no input channels: the output is the bias alone";
  }
  return nullptr;
}

void append_direct_constants(RouteConstants& out) {
  const auto append = [&](const auto* k, const char* dtype) {
    if (k == nullptr) return;
    for (int64_t i = 0; i < k->forward_count; ++i) {
      out.emplace_back(c10::str("direct.", dtype, ".forward.nb"), k->forward[i].nb);
      out.emplace_back(c10::str("direct.", dtype, ".forward.tile"), k->forward[i].tile);
    }
    for (int64_t i = 0; i < k->runs_count; ++i) {
      out.emplace_back(c10::str("direct.", dtype, ".forward_runs.nb"), k->runs[i].nb);
      out.emplace_back(c10::str("direct.", dtype, ".forward_runs.lanes"), k->runs[i].run_lanes);
    }
    for (int64_t i = 0; i < k->weight_grad_count; ++i) {
      out.emplace_back(c10::str("direct.", dtype, ".weight_grad.nb"), k->weight_grad[i].nb);
      out.emplace_back(c10::str("direct.", dtype, ".weight_grad.r"), k->weight_grad[i].r);
    }
  };
  append(direct::kernels<float>(), "float32");
  append(direct::kernels<double>(), "float64");
  out.emplace_back("direct.weight_grad.chunk_bytes", weight_grad_chunk_bytes());
  out.emplace_back("direct.weight_grad_runs.max_channels", kMaxRunsWeightGradChannels);
  if (const auto* k = direct::kernels<float>(); k != nullptr && k->weight_grad_runs != nullptr) {
    out.emplace_back("direct.float32.weight_grad_runs.lanes", k->weight_grad_runs->lanes);
  }
  if (const auto* k = direct::kernels<double>(); k != nullptr && k->weight_grad_runs != nullptr) {
    out.emplace_back("direct.float64.weight_grad_runs.lanes", k->weight_grad_runs->lanes);
  }
}

bool direct_kernels_available(at::ScalarType dtype) {
  return (dtype == at::kFloat && direct::kernels<float>() != nullptr) ||
         (dtype == at::kDouble && direct::kernels<double>() != nullptr);
}

DirectWork direct_forward_work(const Conv2dGeometry& g, at::ScalarType dtype, bool input_grad) {
  // The input gradient's largest phase stands for all of them.
  const DirectProblem p = input_grad ? input_grad_problem(g, grad_phases(g).front()) : forward_problem(g);
  DirectWork work{0, 0};
  with_kernels(dtype, [&](const auto& k) { work = forward_work(k, p); });
  return work;
}

void conv2d_direct_forward(const Conv2dGeometry& g, const at::Tensor& input, const at::Tensor& weight,
                           const at::Tensor& bias, at::Tensor& output) {
  run(forward_problem(g), input, weight, bias, /*input_grad=*/false, output);
}

// Stride 1: one phase, computed in place; strided: run_direct_phases.
void conv2d_direct_backward_input(const Conv2dGeometry& g, const at::Tensor& grad_output,
                                  const at::Tensor& weight, at::Tensor& grad_input) {
  const std::vector<GradPhase> phases = grad_phases(g);
  if (phases.size() == 1) {
    run(input_grad_problem(g, phases[0]), grad_output, weight, at::Tensor(), /*input_grad=*/true, grad_input);
    return;
  }
  if (g.batch == 0) return;
  with_kernels(grad_output.scalar_type(), [&](const auto& k) {
    using T = typename std::remove_reference_t<decltype(k)>::Scalar;
    run_direct_phases(k, g, grad_output.const_data_ptr<T>(), weight.const_data_ptr<T>(),
                      grad_input.mutable_data_ptr<T>(), grad_output.options());
  });
}

void conv2d_direct_backward_weight(const Conv2dGeometry& g, const at::Tensor& input,
                                   const at::Tensor& grad_output, at::Tensor& grad_weight) {
  with_kernels(input.scalar_type(), [&](const auto& k) { run_weight_grad(k, g, input, grad_output, grad_weight); });
}

}  // namespace custom_conv

// conv2d on the CPU: forward, and the three backward ops side by side.
//
// All three products go through im2col (see im2col.h). Per group g, with
// K = C_in / groups * kH * kW rows per group and a chunk of B samples:
//   forward          out_g  (C_out/g, B*L) = W_g (C_out/g, K) @ cols_g (K, B*L)
//   backward input   cols_g (K, B*L)       = W_g^T @ grad_out_g, then col2im
//   backward weight  dW_g^T (K, C_out/g)  += cols_g @ grad_out_g^T
// The backward-input product followed by col2im is exactly the lecture's
// "convolve the zero-padded output gradient with the kernel rotated by 180°":
// column (oh, ow) of W_g^T @ grad_out_g holds, for every tap (ki, kj), the
// contribution of output (oh, ow) to the input pixel that tap touched, and
// col2im adds them up per input pixel. Gathered per input pixel instead,
// that sum runs over the taps in reverse order, i.e. over the flipped kernel.
//
// When every group has a single input channel (depthwise), the GEMMs would
// have a reduction of only kH * kW; those layers take the direct loops of
// depthwise_conv2d.h instead.
#include "depthwise_conv2d.h"
#include "direct_conv2d.h"
#include "geometry.h"
#include "im2col.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace custom_conv {
namespace {

// Scheduling. The batch is cut into chunks whose im2col columns fit in a
// core's cache (about 1 MiB of float32), and the chunks are spread over the
// threads: each thread unrolls its chunk and multiplies it with one GEMM
// while the columns are still in cache, instead of writing a large column
// matrix out to memory and reading it back. That matters most for layers with
// few output channels, whose GEMMs do little work per column. Deep layers
// have small output planes, though, and one sample would make a GEMM too
// thin to run well, so a chunk always spans at least kMinGemmWidth output
// columns; those GEMMs do enough work per column that the columns need not
// stay in cache. Chunks have at most ceil(N / threads) samples so that every
// thread gets one; a single chunk runs on the calling thread and BLAS
// parallelises its GEMM itself.
constexpr int64_t kChunkColumns = int64_t{1} << 18;
constexpr int64_t kMinGemmWidth = 512;
// The weight gradient is summed over the batch. Each of at most this many
// blocks of chunks accumulates its own partial gradient, and the partials are
// then added in block order, so the result is the same on every run with the
// same number of threads. Their memory is bounded by kPartialsBudget values.
constexpr int64_t kWeightPartials = 8;
constexpr int64_t kPartialsBudget = int64_t{1} << 22;

struct Chunks {
  int64_t size, count;
};

Chunks chunks_for(const Conv2dGeometry& g) {
  const int64_t per_thread = ceil_div(std::max<int64_t>(g.batch, 1), at::get_num_threads());
  const int64_t wide_enough = ceil_div(kMinGemmWidth, std::max<int64_t>(g.output_plane(), 1));
  const int64_t size = std::min(std::max(g.batch_chunk(kChunkColumns), wide_enough), per_thread);
  return {size, ceil_div(g.batch, size)};
}

// at::parallel_for for bodies that call ATen ops (the GEMMs): worker threads
// start without the caller's thread-local state, so without this they would
// re-enter autograd (and fail on tensors that require grad) and escape the
// profiler. Items are split over threads only in tasks of at least ~1M
// multiply-adds; waking threads for less costs more than it saves.
template <typename F>
void parallel_for_with_state(int64_t count, int64_t macs_per_item, F body) {
  constexpr int64_t kMinTaskMacs = int64_t{1} << 20;
  const int64_t grain = std::max<int64_t>(1, kMinTaskMacs / std::max<int64_t>(1, macs_per_item));
  const at::ThreadLocalState state;
  at::parallel_for(0, count, grain, [&](int64_t b, int64_t e) {
    at::ThreadLocalStateGuard guard(state);
    body(b, e);
  });
}

int64_t macs_per_chunk(const Conv2dGeometry& g, const Chunks& c) {
  return c.size * g.out_channels * g.col_rows_per_group() * g.output_plane();
}

// The first groups * rows * cols values of a flat scratch buffer, as matrices.
at::Tensor as_matrices(const at::Tensor& buffer, int64_t groups, int64_t rows, int64_t cols) {
  return buffer.narrow(0, 0, groups * rows * cols).view({groups, rows, cols});
}

// im2col of samples [n0, n0 + count) of an (N, C, H, W) contiguous input,
// as (groups, K, count * L) matrices.
at::Tensor unroll(const at::Tensor& input, int64_t n0, int64_t count, const Conv2dGeometry& g,
                  const at::Tensor& buffer) {
  at::Tensor cols = as_matrices(buffer, g.groups, g.col_rows_per_group(), count * g.output_plane());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "im2col", [&] {
    im2col(input.const_data_ptr<scalar_t>() + n0 * g.in_channels * g.in_h * g.in_w, g, count,
           cols.mutable_data_ptr<scalar_t>());
  });
  return cols;
}

// col2im into samples [n0, n0 + count) of an (N, C, H, W) contiguous tensor.
void fold(const at::Tensor& cols, int64_t n0, int64_t count, const Conv2dGeometry& g, at::Tensor& grad_input) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, cols.scalar_type(), "col2im", [&] {
    col2im(cols.const_data_ptr<scalar_t>(), g, count,
           grad_input.mutable_data_ptr<scalar_t>() + n0 * g.in_channels * g.in_h * g.in_w);
  });
}

// out[grp] = a[grp] @ b[grp] for every group, plus the bias column when given:
// the bias rides in the GEMM's accumulator (beta = 1), not in a second pass.
void multiply(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias_col = {}) {
  for (int64_t grp = 0; grp < out.size(0); ++grp) {
    at::Tensor dst = out[grp];
    if (bias_col.defined()) {
      at::addmm_out(dst, bias_col[grp].expand({-1, dst.size(1)}), a[grp], b[grp]);
    } else {
      at::mm_out(dst, a[grp], b[grp]);
    }
  }
}

// Samples [n0, n0 + count) of an (N, C, H, W) tensor as the (C, count, L)
// view that the chunk's GEMMs use: one row of count * L values per channel.
at::Tensor channel_major(const at::Tensor& t, int64_t n0, int64_t count, int64_t L) {
  return t.narrow(0, n0, count).view({count, t.size(1), L}).transpose(0, 1);
}

// ---- The direct kernels (direct_conv2d.h), for float and double ----------

// Depthwise layers with more than one group go to depthwise_conv2d.h: the
// direct kernels would reduce over a single channel per group. One group of
// one input channel (a grayscale first layer) is an ordinary convolution.
bool separate_planes(const Conv2dGeometry& g) {
  return is_depthwise(g) && g.groups > 1;
}

// A convolution as the direct forward kernel sees it: the forward pass, or
// the input gradient of a stride-1 convolution with the output gradient as
// input. A stride s is turned into stride 1 over "phase" planes: the padded
// plane is split into s_h * s_w planes of every s-th row and column, phase
// (a, b) holding padded[i * s_h + a][j * s_w + b], Hq x Wq each. Output
// (oh, ow) reads, for tap (ki, kj), padded[oh * s_h + ki * dil_h][ow * s_w +
// kj * dil_w], which is phase ((ki * dil_h) % s_h, (kj * dil_w) % s_w) at
// (oh + ki * dil_h / s_h, ow + kj * dil_w / s_w): consecutive outputs read
// consecutive values again. With stride 1 there is one phase, the padded plane.
struct DirectProblem {
  int64_t batch, in_channels, in_h, in_w, pad_h, pad_w, stride_h, stride_w;
  int64_t groups, cin, cout, kernel_h, kernel_w, dil_h, dil_w, out_h, out_w;
  int64_t taps() const { return kernel_h * kernel_w; }
  int64_t phase_h() const { return ceil_div(in_h + 2 * pad_h, stride_h); }
  int64_t phase_w() const { return ceil_div(in_w + 2 * pad_w, stride_w); }
  // Values per input channel: all its phase planes.
  int64_t channel_values() const { return stride_h * stride_w * phase_h() * phase_w(); }
};

// Whether the direct kernels should run a problem: they are written for
// stride 1, and they pay for the lanes of an output-channel block that a
// layer leaves empty and for the extended positions of their tiles that are
// not outputs. When 40% of the work or more would be waste (planes of 2 x 2,
// few output channels) the im2col route is faster.
// How a problem's outputs are cut into tiles of `tile` outputs: along the
// extended numbering, or aligned to rows when that computes fewer
// non-outputs; and the number of tiles.
struct Tiling {
  int64_t row_tiles, count;
};

Tiling tiling(const DirectProblem& p, int64_t tile) {
  const int64_t extended = ceil_div((p.out_h - 1) * p.phase_w() + p.out_w, tile);
  const int64_t per_row = ceil_div(p.out_w, tile);
  if (per_row * p.out_h <= extended) return {per_row, per_row * p.out_h};
  return {0, extended};
}

// The direct kernels win where im2col costs as much as the GEMM it feeds:
// few channels (a reduction of C_in * kH * kW <= kMaxDirectSteps steps, as in
// LeNet, ResNet-20 and the first VGG/ResNet-18 layers) and kernels larger
// than 1x1. Deeper layers give BLAS long enough reductions to run near the
// processor's peak, which these unblocked loops do not reach, and a 1x1
// convolution needs no im2col at all (benchmarks/results, 2026-11-26).
constexpr int64_t kMaxDirectSteps = 576;

template <typename T>
bool direct_fits(const direct::Kernels<T>& k, const DirectProblem& p) {
  if (p.pad_h < 0 || p.pad_w < 0 || p.taps() == 1 || p.cin * p.taps() > kMaxDirectSteps) return false;
  const int64_t nb = k.forward_block(p.cout), tile = k.forward_tile(nb);
  const double computed = static_cast<double>(tiling(p, tile).count * tile) * ceil_div(p.cout, nb) * nb;
  return static_cast<double>(p.out_h * p.out_w * p.cout) >= 0.6 * computed;
}

DirectProblem forward_problem(const Conv2dGeometry& g) {
  return {g.batch, g.in_channels, g.in_h, g.in_w, g.pad_h, g.pad_w, g.stride_h, g.stride_w,
          g.groups, g.in_channels_per_group(), g.out_channels_per_group(),
          g.kernel_h, g.kernel_w, g.dilation_h, g.dilation_w, g.out_h, g.out_w};
}

// The input gradient of a stride-1 convolution is a stride-1 convolution of
// the output gradient, padded by dilation * (k - 1) - padding, with the kernel
// rotated by 180 degrees and its two channel axes swapped (see pack_weights).
DirectProblem input_grad_problem(const Conv2dGeometry& g) {
  return {g.batch, g.out_channels, g.out_h, g.out_w,
          g.dilation_h * (g.kernel_h - 1) - g.pad_h, g.dilation_w * (g.kernel_w - 1) - g.pad_w, 1, 1,
          g.groups, g.out_channels_per_group(), g.in_channels_per_group(),
          g.kernel_h, g.kernel_w, g.dilation_h, g.dilation_w, g.in_h, g.in_w};
}

// Weights in the kernel's order, [group][output block][ci * taps + tap][nb]:
// each step of the reduction loads nb output channels' weights at once.
// Channels past the last of a block are zero. With `rotate`, the problem is
// the input gradient: its output channel c, input channel i and tap t read
// the forward weight [i][c][taps - 1 - t], the kernel turned by 180 degrees.
template <typename T>
at::Tensor pack_weights(const DirectProblem& p, const T* weight, int64_t nb, bool rotate,
                        const at::TensorOptions& options) {
  const int64_t taps = p.taps(), steps = p.cin * taps, blocks = ceil_div(p.cout, nb);
  at::Tensor packed_tensor = at::zeros({p.groups * blocks * steps * nb}, options);
  T* packed = packed_tensor.mutable_data_ptr<T>();
  for (int64_t grp = 0; grp < p.groups; ++grp) {
    for (int64_t o = 0; o < p.cout; ++o) {
      for (int64_t i = 0; i < p.cin; ++i) {
        for (int64_t t = 0; t < taps; ++t) {
          // The forward weight is (groups * cout, cin, taps) for the forward
          // problem and (groups * cin, cout, taps) for the rotated one.
          const T w = rotate ? weight[((grp * p.cin + i) * p.cout + o) * taps + (taps - 1 - t)]
                             : weight[((grp * p.cout + o) * p.cin + i) * taps + t];
          packed[((grp * blocks + o / nb) * steps + i * taps + t) * nb + o % nb] = w;
        }
      }
    }
  }
  return packed_tensor;
}

// Scratch buffers, one per thread of a parallel_for (indexed by
// at::get_thread_num()), allocated up front through ATen so that they are
// counted by the profiler, and by the benchmark's scratch measurement.
template <typename T>
struct PerThread {
  at::Tensor buffers;
  int64_t size;
  PerThread(int64_t size, const at::TensorOptions& options)
      : buffers(at::zeros({at::get_num_threads(), size}, options)), size(size) {}
  T* mine() { return buffers.mutable_data_ptr<T>() + at::get_thread_num() * size; }
};

// Copies a (C, H, W) sample into its zero-padded phase planes (see
// DirectProblem), followed by `slack` zeros. Stride 1 copies whole rows.
template <typename T>
void pad_planes(const DirectProblem& p, const T* src, int64_t slack, T* dst) {
  const int64_t H = p.in_h, W = p.in_w;
  if (p.stride_h == 1 && p.stride_w == 1) {
    const int64_t Wp = W + 2 * p.pad_w;
    for (int64_t c = 0; c < p.in_channels; ++c) {
      std::fill(dst, dst + p.pad_h * Wp, T(0));
      dst += p.pad_h * Wp;
      for (int64_t h = 0; h < H; ++h, dst += Wp, src += W) {
        std::fill(dst, dst + p.pad_w, T(0));
        std::copy(src, src + W, dst + p.pad_w);
        std::fill(dst + p.pad_w + W, dst + Wp, T(0));
      }
      std::fill(dst, dst + p.pad_h * Wp, T(0));
      dst += p.pad_h * Wp;
    }
  } else {
    const int64_t Hq = p.phase_h(), Wq = p.phase_w();
    for (int64_t c = 0; c < p.in_channels; ++c, src += H * W) {
      for (int64_t a = 0; a < p.stride_h; ++a) {
        for (int64_t b = 0; b < p.stride_w; ++b) {
          for (int64_t i = 0; i < Hq; ++i) {
            const int64_t h = i * p.stride_h + a - p.pad_h;
            for (int64_t j = 0; j < Wq; ++j, ++dst) {
              const int64_t w = j * p.stride_w + b - p.pad_w;
              *dst = (h >= 0 && h < H && w >= 0 && w < W) ? src[h * W + w] : T(0);
            }
          }
        }
      }
    }
  }
  std::fill(dst, dst + slack, T(0));
}

// dst[j * dst_stride + i] = src[i * src_stride + j] for a rows x cols src,
// in square blocks that stay in the L1 cache on both sides.
template <typename T>
void transpose(const T* src, int64_t rows, int64_t cols, int64_t src_stride, T* dst, int64_t dst_stride) {
  constexpr int64_t kBlock = 16;
  for (int64_t i0 = 0; i0 < rows; i0 += kBlock) {
    const int64_t i1 = std::min(rows, i0 + kBlock);
    for (int64_t j0 = 0; j0 < cols; j0 += kBlock) {
      const int64_t j1 = std::min(cols, j0 + kBlock);
      for (int64_t j = j0; j < j1; ++j) {
        for (int64_t i = i0; i < i1; ++i) dst[j * dst_stride + i] = src[i * src_stride + j];
      }
    }
  }
}

// Runs a DirectProblem on (N, in_channels, in_h, in_w) `in` into (N, groups *
// cout, out_h, out_w) `out`. Samples are spread over the threads, each
// padding its own sample into a private buffer, so scratch memory is a few
// samples whatever the batch; with fewer samples than threads, the tiles
// of each sample are spread instead.
template <typename T>
void run_direct(const direct::Kernels<T>& k, const DirectProblem& p, const T* in, const T* weight,
                bool rotate, const T* bias, T* out, const at::TensorOptions& options) {
  const int64_t nb = k.forward_block(p.cout), tile = k.forward_tile(nb);
  const int64_t Hq = p.phase_h(), Wq = p.phase_w(), plane = p.channel_values(), taps = p.taps();
  const at::Tensor packed_tensor = pack_weights(p, weight, nb, rotate, options);
  const T* packed = packed_tensor.const_data_ptr<T>();
  std::vector<int64_t> koff(p.cin * taps);
  for (int64_t i = 0; i < p.cin; ++i) {
    for (int64_t ki = 0; ki < p.kernel_h; ++ki) {
      for (int64_t kj = 0; kj < p.kernel_w; ++kj) {
        const int64_t y = ki * p.dil_h, x = kj * p.dil_w;
        const int64_t phase = (y % p.stride_h) * p.stride_w + x % p.stride_w;
        koff[(i * p.kernel_h + ki) * p.kernel_w + kj] =
            i * plane + (phase * Hq + y / p.stride_h) * Wq + x / p.stride_w;
      }
    }
  }
  const int64_t sample_in = p.in_channels * p.in_h * p.in_w, sample_padded = p.in_channels * plane + tile;
  const int64_t L = p.out_h * p.out_w, blocks = ceil_div(p.cout, nb);
  const Tiling tiles_of = tiling(p, tile);
  const int64_t tiles = tiles_of.count;
  auto run_tiles = [&](int64_t n, const T* xp, int64_t begin, int64_t end) {
    for (int64_t grp = 0; grp < p.groups; ++grp) {
      const direct::ForwardArgs<T> args{
          xp + grp * p.cin * plane, koff.data(), p.cin * taps,
          packed + grp * blocks * p.cin * taps * nb, bias ? bias + grp * p.cout : nullptr,
          out + (n * p.groups + grp) * p.cout * L, p.cout, Wq, p.out_h, p.out_w, tiles_of.row_tiles};
      k.forward(args, nb, begin, end);
    }
  };
  const int64_t macs_per_tile = p.groups * blocks * nb * p.cin * taps * tile;
  constexpr int64_t kMinTaskMacs = int64_t{1} << 20;
  if (p.batch >= at::get_num_threads()) {
    const int64_t grain = std::max<int64_t>(1, kMinTaskMacs / std::max<int64_t>(1, macs_per_tile * tiles));
    PerThread<T> padded(sample_padded, options);
    at::parallel_for(0, p.batch, grain, [&](int64_t begin, int64_t end) {
      T* xp = padded.mine();
      for (int64_t n = begin; n < end; ++n) {
        pad_planes(p, in + n * sample_in, tile, xp);
        run_tiles(n, xp, 0, tiles);
      }
    });
  } else {
    const at::Tensor padded = at::empty({sample_padded}, options);
    T* xp = padded.mutable_data_ptr<T>();
    const int64_t grain = std::max<int64_t>(1, kMinTaskMacs / std::max<int64_t>(1, macs_per_tile));
    for (int64_t n = 0; n < p.batch; ++n) {
      pad_planes(p, in + n * sample_in, tile, xp);
      at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
        run_tiles(n, xp, begin, end);
      });
    }
  }
}

// Runs the forward (rotate = false) or the input gradient (rotate = true)
// with the direct kernels when they fit; returns false to take im2col.
bool try_direct(const Conv2dGeometry& g, const at::Tensor& in, const at::Tensor& weight,
                const at::Tensor& bias, bool rotate, at::Tensor& out) {
  if ((rotate && (g.stride_h != 1 || g.stride_w != 1)) || separate_planes(g) || g.batch == 0) return false;
  const DirectProblem p = rotate ? input_grad_problem(g) : forward_problem(g);
  bool done = false;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const direct::Kernels<T>* k = direct::kernels<T>();
    if (k == nullptr || !direct_fits(*k, p)) return;
    run_direct(*k, p, in.const_data_ptr<T>(), weight.const_data_ptr<T>(), rotate,
               bias.defined() ? bias.const_data_ptr<T>() : nullptr, out.mutable_data_ptr<T>(), in.options());
    done = true;
  };
  if (in.scalar_type() == at::kFloat) run(float());
  if (in.scalar_type() == at::kDouble) run(double());
  return done;
}

// The weight gradient with the direct kernels (any stride), summed over the
// batch in at most kWeightPartials fixed blocks of samples, like the im2col
// route. Returns false when they do not apply.
//
// The kernel broadcasts R consecutive channels of the channels-last input.
// A single input channel (a grayscale first layer) would leave most of them
// empty, so there each kernel row's kW taps become channels: channel kj at
// position p holds the input at p + kj * dilation_w, and the kernel then
// walks only the kH rows of taps. Layers with 2 or 3 input channels, more
// than 64 output channels or long reductions run faster on im2col (as
// measured by benchmarks/bench.py).
bool try_direct_weight_grad(const Conv2dGeometry& g, const at::Tensor& input,
                            const at::Tensor& grad_output, at::Tensor& grad_weight) {
  if (separate_planes(g) || g.batch == 0) return false;
  bool done = false;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const direct::Kernels<T>* k = direct::kernels<T>();
    if (k == nullptr) return;
    const int64_t Ci = g.in_channels_per_group(), Co = g.out_channels_per_group(), L = g.output_plane();
    const int64_t kernel_taps = g.kernel_h * g.kernel_w;
    const bool few_channels = Ci > 1 && Ci < 4;
    if (kernel_taps == 1 || Ci * kernel_taps > kMaxDirectSteps || Co > 64 || few_channels) return;
    const int64_t fold = (Ci == 1 && g.kernel_w <= 16) ? g.kernel_w : 1;  // taps per channel
    const int64_t channels = Ci * fold, taps = g.kernel_h * g.kernel_w / fold;
    const int64_t nb = k->forward_block(Co), R = k->weight_grad_channels(nb, channels);
    const int64_t cpad = ceil_div(channels, R) * R, copad = ceil_div(Co, nb) * nb;
    const int64_t Hp = g.in_h + 2 * g.pad_h, Wp = g.in_w + 2 * g.pad_w, positions = Hp * Wp;
    const int64_t per_group = taps * cpad * copad, per_partial = g.groups * per_group;
    const int64_t blocks = std::max<int64_t>(1, std::min({g.batch, kWeightPartials, kPartialsBudget / per_partial}));
    std::vector<int64_t> toff(taps);
    for (int64_t t = 0; t < taps; ++t) {
      const int64_t ki = t * fold / g.kernel_w, kj = t * fold % g.kernel_w;
      toff[t] = ki * g.dilation_h * Wp + kj * g.dilation_w;
    }
    const at::Tensor partials_tensor = at::zeros({blocks * per_partial}, input.options());
    T* partials = partials_tensor.mutable_data_ptr<T>();
    const T* x = input.const_data_ptr<T>();
    const T* go = grad_output.const_data_ptr<T>();
    const int64_t plane = g.in_h * g.in_w;
    const int64_t macs_per_block = ceil_div(g.batch, blocks) * g.out_channels * Ci * g.kernel_h * g.kernel_w * L;
    constexpr int64_t kMinTaskMacs = int64_t{1} << 20;
    PerThread<T> xn_buffers(positions * cpad, input.options()), got_buffers(L * copad, input.options());
    PerThread<T> unfolded_buffers(fold > 1 ? positions * Ci : 0, input.options());
    at::parallel_for(0, blocks, std::max<int64_t>(1, kMinTaskMacs / macs_per_block), [&](int64_t begin, int64_t end) {
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
                toff.data(), taps, cpad, copad, Wp, g.stride_h, g.stride_w, g.out_h, g.out_w};
            k->weight_grad(args, nb, R);
          }
        }
      }
    });
    // grad_weight[grp * Co + co][ci][ki][kj] = sum over blocks, in order, of
    // partial[grp][tap][channel][co], with (tap, channel) = ((ki, kj), ci)
    // or, folded, (ki, ci * kW + kj).
    T* gw = grad_weight.mutable_data_ptr<T>();
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      for (int64_t co = 0; co < Co; ++co) {
        for (int64_t ci = 0; ci < Ci; ++ci) {
          for (int64_t t = 0; t < kernel_taps; ++t) {
            const int64_t tap = t / fold, channel = ci * fold + t % fold;
            const int64_t at = grp * per_group + (tap * cpad + channel) * copad + co;
            T sum = partials[at];
            for (int64_t b = 1; b < blocks; ++b) sum += partials[b * per_partial + at];
            gw[((grp * Co + co) * Ci + ci) * kernel_taps + t] = sum;
          }
        }
      }
    }
    done = true;
  };
  if (input.scalar_type() == at::kFloat) run(float());
  if (input.scalar_type() == at::kDouble) run(double());
  return done;
}

at::Tensor conv2d_forward_cpu(
    const at::Tensor& input_,
    const at::Tensor& weight_,
    const c10::optional<at::Tensor>& bias,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    int64_t groups) {
  check_conv2d_tensors(input_, weight_, bias);
  const Conv2dGeometry g = conv2d_geometry(
      input_.sizes(), weight_.sizes(), stride, padding, dilation, groups);
  const at::Tensor input = input_.contiguous();
  const int64_t Co = g.out_channels_per_group(), K = g.col_rows_per_group(), L = g.output_plane();
  const at::Tensor weight = weight_.contiguous().view({groups, Co, K});
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor bias_col = has_bias ? bias->contiguous().view({groups, Co, 1}) : at::Tensor();

  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());
  if (try_direct(g, input, weight, has_bias ? bias->contiguous() : at::Tensor(), false, output)) {
    return output;
  }
  if (is_depthwise(g)) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "depthwise_conv2d_forward_cpu", [&] {
      depthwise_conv2d_forward(input.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                               has_bias ? bias_col.const_data_ptr<scalar_t>() : nullptr, g,
                               output.mutable_data_ptr<scalar_t>());
    });
    return output;
  }
  const Chunks chunks = chunks_for(g);
  parallel_for_with_state(chunks.count, macs_per_chunk(g, chunks), [&](int64_t begin, int64_t end) {
    const at::Tensor cols_buf = at::empty({g.groups * K * chunks.size * L}, input.options());
    const at::Tensor out_buf = chunks.size > 1 ? at::empty({g.out_channels * chunks.size * L}, input.options())
                                               : at::Tensor();
    for (int64_t c = begin; c < end; ++c) {
      const int64_t n0 = c * chunks.size, B = std::min(chunks.size, g.batch - n0);
      const at::Tensor cols = unroll(input, n0, B, g, cols_buf);
      if (B == 1) {
        multiply(output[n0].view({groups, Co, L}), weight, cols, bias_col);
      } else {
        // The GEMM yields (C_out, B * L); the output wants (B, C_out, L).
        const at::Tensor out = as_matrices(out_buf, groups, Co, B * L);
        multiply(out, weight, cols, bias_col);
        channel_major(output, n0, B, L).copy_(out.view({g.out_channels, B, L}));
      }
    }
  });
  return output;
}

at::Tensor conv2d_backward_input_cpu(
    const at::Tensor& grad_output_,
    const at::Tensor& weight_,
    c10::IntArrayRef input_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    int64_t groups) {
  check_floating_4d(weight_, "conv2d_backward_input", "weight");
  const Conv2dGeometry g = conv2d_geometry(
      input_size, weight_.sizes(), stride, padding, dilation, groups);
  check_conv2d_grad_output(grad_output_, g, weight_);
  const at::Tensor grad_output = grad_output_.contiguous();
  const at::Tensor weight = weight_.contiguous();
  const int64_t Co = g.out_channels_per_group(), K = g.col_rows_per_group(), L = g.output_plane();

  at::Tensor grad_input = at::empty(input_size, weight.options());
  if (try_direct(g, grad_output, weight, at::Tensor(), true, grad_input)) {
    return grad_input;
  }
  if (is_depthwise(g)) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weight.scalar_type(), "depthwise_conv2d_backward_input_cpu", [&] {
      depthwise_conv2d_backward_input(grad_output.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                                      g, grad_input.mutable_data_ptr<scalar_t>());
    });
    return grad_input;
  }
  // W_g^T: (K, C_out/g), a transposed view; BLAS reads it without a copy.
  const at::Tensor weight_t = weight.view({groups, Co, K}).transpose(1, 2);
  const Chunks chunks = chunks_for(g);
  parallel_for_with_state(chunks.count, macs_per_chunk(g, chunks), [&](int64_t begin, int64_t end) {
    const at::Tensor cols_buf = at::empty({g.groups * K * chunks.size * L}, weight.options());
    const at::Tensor go_buf = chunks.size > 1 ? at::empty({g.out_channels * chunks.size * L}, weight.options())
                                              : at::Tensor();
    for (int64_t c = begin; c < end; ++c) {
      const int64_t n0 = c * chunks.size, B = std::min(chunks.size, g.batch - n0);
      at::Tensor go = grad_output[n0].view({groups, Co, L});
      if (B > 1) {
        go = as_matrices(go_buf, groups, Co, B * L);
        go.view({g.out_channels, B, L}).copy_(channel_major(grad_output, n0, B, L));
      }
      const at::Tensor cols = as_matrices(cols_buf, groups, K, B * L);
      multiply(cols, weight_t, go);
      fold(cols, n0, B, g, grad_input);
    }
  });
  return grad_input;
}

at::Tensor conv2d_backward_weight_cpu(
    const at::Tensor& grad_output_,
    const at::Tensor& input_,
    c10::IntArrayRef weight_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    int64_t groups) {
  check_floating_4d(input_, "conv2d_backward_weight", "input");
  const Conv2dGeometry g = conv2d_geometry(
      input_.sizes(), weight_size, stride, padding, dilation, groups);
  check_conv2d_grad_output(grad_output_, g, input_);
  const at::Tensor input = input_.contiguous();
  const at::Tensor grad_output = grad_output_.contiguous();
  const int64_t Co = g.out_channels_per_group(), K = g.col_rows_per_group(), L = g.output_plane();

  at::Tensor grad_weight = at::empty(weight_size, input.options());
  if (g.batch == 0) {
    return grad_weight.zero_();
  }
  if (try_direct_weight_grad(g, input, grad_output, grad_weight)) {
    return grad_weight;
  }
  if (is_depthwise(g)) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "depthwise_conv2d_backward_weight_cpu", [&] {
      depthwise_conv2d_backward_weight(grad_output.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
                                       g, grad_weight.mutable_data_ptr<scalar_t>());
    });
    return grad_weight;
  }
  const Chunks chunks = chunks_for(g);
  const int64_t blocks = std::max<int64_t>(
      1, std::min({chunks.count, kWeightPartials, kPartialsBudget / (g.out_channels * K)}));
  // Partials hold the transposed gradient, dW_g^T (K, C_out/g) = cols_g @
  // grad_out_g^T: BLAS runs this orientation several times faster than
  // grad_out_g @ cols_g^T when C_out/g is small (16 channels: 3.4x, measured).
  const at::Tensor partials = at::empty({blocks, groups, K, Co}, input.options());
  const int64_t block_macs = macs_per_chunk(g, chunks) * ceil_div(chunks.count, blocks);
  parallel_for_with_state(blocks, block_macs, [&](int64_t begin, int64_t end) {
    const at::Tensor cols_buf = at::empty({g.groups * K * chunks.size * L}, input.options());
    const at::Tensor go_buf = chunks.size > 1 ? at::empty({g.out_channels * chunks.size * L}, input.options())
                                              : at::Tensor();
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = block * chunks.count / blocks, last = (block + 1) * chunks.count / blocks;
      for (int64_t c = first; c < last; ++c) {
        const int64_t n0 = c * chunks.size, B = std::min(chunks.size, g.batch - n0);
        const at::Tensor cols = unroll(input, n0, B, g, cols_buf);
        at::Tensor go = grad_output[n0].view({groups, Co, L});
        if (B > 1) {
          go = as_matrices(go_buf, groups, Co, B * L);
          go.view({g.out_channels, B, L}).copy_(channel_major(grad_output, n0, B, L));
        }
        // The block's first chunk writes its partial (beta = 0, so no
        // zero-fill is needed); later chunks add onto it inside the GEMM.
        const double beta = c == first ? 0.0 : 1.0;
        for (int64_t grp = 0; grp < groups; ++grp) {
          partials[block][grp].addmm_(cols[grp], go[grp].t(), beta, 1.0);
        }
      }
    }
  });
  at::Tensor gw = grad_weight.view({groups, Co, K});
  gw.copy_(partials[0].transpose(1, 2));
  for (int64_t block = 1; block < blocks; ++block) {
    gw.add_(partials[block].transpose(1, 2));
  }
  return grad_weight;
}

// Sum of grad_output over batch and space, one channel per task. The sum
// runs in double so that it does not drift with large batches or images.
at::Tensor conv2d_backward_bias_cpu(const at::Tensor& grad_output_) {
  check_floating_4d(grad_output_, "conv2d_backward_bias", "grad_output");
  const at::Tensor grad_output = grad_output_.contiguous();
  const int64_t N = grad_output.size(0), C = grad_output.size(1);
  const int64_t L = grad_output.size(2) * grad_output.size(3);
  at::Tensor grad_bias = at::empty({C}, grad_output.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad_output.scalar_type(), "conv2d_backward_bias_cpu", [&] {
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    scalar_t* out = grad_bias.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        double sum = 0.0;
        for (int64_t n = 0; n < N; ++n) {
          const scalar_t* plane = go + (n * C + c) * L;
          for (int64_t i = 0; i < L; ++i) {
            sum += static_cast<double>(plane[i]);
          }
        }
        out[c] = static_cast<scalar_t>(sum);
      }
    });
  });
  return grad_bias;
}

}  // namespace

TORCH_LIBRARY_IMPL(custom_conv, CPU, m) {
  m.impl("conv2d_forward", &conv2d_forward_cpu);
  m.impl("conv2d_backward_input", &conv2d_backward_input_cpu);
  m.impl("conv2d_backward_weight", &conv2d_backward_weight_cpu);
  m.impl("conv2d_backward_bias", &conv2d_backward_bias_cpu);
}

}  // namespace custom_conv

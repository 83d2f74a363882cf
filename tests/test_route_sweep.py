"""Every CPU route, forced in turn (custom_conv.forced_algorithm), on a table
of layers generated from that route's own blocking constants
(torch.ops.custom_conv.cpu_route_constants), on 1, 2, 3, 4 and 8 threads,
against torch in float64: the output and every gradient.

Hand-picked cases test the layers someone thought of; this sweep tests the
edges of every blocking the kernels have, so that a bug in a partition (a
remainder dropped, a range cut one short, a split that only happens on 3 or
more threads) shows on some layer. The shapes are chosen to cross each edge
once and stay small; when a constant changes, the shapes follow it.

What crosses which edge:
- thread counts: every layer runs on 1, 2, 3, 4 and 8 threads. The routes
  split batches, tiles, planes and channels by the thread count; 3 leaves a
  remainder, 8 makes more threads than most work items.
- batch: 1 (a lone sample's tiles spread over the threads), and one more
  than the weight gradient's partial sums (the blocks of samples summed
  separately come out uneven).
- channel blocks: output channels one past a register block, input
  channels one past a weight-gradient tile, grouped layers whose groups
  hold several channel blocks each.
- tiles: output rows that are not a multiple of the tile, Winograd planes
  on either side of its layout switch, more blocks of tiles than partial
  sums, fewer partial sums than threads (its output channels split).
- geometry at the routes' limits: asymmetric stride, dilation and padding,
  each axis on its own, so that a contract checking one axis twice
  cannot pass.

A route's contract is checked separately: for every layer of every table,
each route accepts exactly what CONTRACTS (a plain statement of what each
route computes) says it can, per pass and dtype. Where a forced route
cannot run a pass, the chooser runs it, and the comparison with torch
still holds."""
import collections
import math

import pytest
import torch
import torch.nn.functional as F

import custom_conv
from custom_conv import functional as CF
from helpers import num_threads

PASSES = custom_conv.explain.PASSES
THREADS = (1, 2, 3, 4, 8)
ROUTES = ("winograd", "direct", "depthwise", "im2col")


def route_constants():
    """name -> list of values, in the order the C++ tables hold them."""
    constants = collections.defaultdict(list)
    for name, value in zip(*torch.ops.custom_conv.cpu_route_constants()):
        constants[name].append(value)
    return constants


C = route_constants()
KERNELS = custom_conv.cpu_kernels()


class Layer(collections.namedtuple("Layer", "input weight kwargs")):
    """(N, C_in, H, W), (C_out, C_in / groups, kH, kW) and F.conv2d's keyword arguments."""


def layer(n, cin, cout, hw, kernel, groups=1, **kwargs):
    h, w = hw if isinstance(hw, tuple) else (hw, hw)
    kh, kw = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    return Layer((n, cin, h, w), (cout, cin // groups, kh, kw), dict(kwargs, groups=groups))


def pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


# ------------------------------------------------------- what each route computes

def contract(route, lay, pass_name, dtype):
    """Whether `route` can compute this pass of the layer in this dtype: the
    contract each route states, said once more in plain terms."""
    n, cin, _, _ = lay.input
    _, cin_g, kh, kw = lay.weight
    stride, pad, dil = (pair(lay.kwargs.get(k, d)) for k, d in (("stride", 1), ("padding", 0), ("dilation", 1)))
    if route == "im2col":
        return True
    if route == "depthwise":
        return cin_g == 1
    if route == "winograd":
        return ((kh, kw) == (3, 3) and stride == (1, 1) and dil == (1, 1) and dtype == torch.float32
                and lay.kwargs["groups"] == 1 and max(pad) <= 2)
    assert route == "direct"
    return KERNELS != "baseline" and dtype in (torch.float32, torch.float64) and n > 0 and cin > 0


# ------------------------------------------------------------ the layer tables

def largest(name):
    return max(C[name]) if C[name] else 0


def im2col_layers():
    """The batch is cut into chunks of about im2col.chunk_columns column
    values (at least im2col.min_gemm_width columns wide, at most a thread's
    share of the batch), summed in weight_partials blocks for the weight
    gradient; deep layers' small planes run the whole batch as one GEMM."""
    partials = C["weight_partials"][0]
    # A sample of 16 * 9 rows x 26 * 26 columns is over a third of a chunk:
    # two samples per chunk, so 2 * partials + 3 samples make an odd number
    # of chunks, more than partial sums, the last one short.
    rows = 16 * 9
    side = math.isqrt(C["im2col.chunk_columns"][0] // (2 * rows))
    grouped = C["im2col.min_group_columns"][0]  # one position per group on a 2x2 plane
    # c channels in and out: blocks of tap_block_bytes / (9 * c * 8) channels,
    # about c / 2.8 of them.
    wide = math.isqrt(int(2.8 * C["im2col.tap_block_bytes"][0] / 72)) + 1
    return {
        "chunks of two samples, more chunks than partial sums, the last short":
            layer(2 * partials + 3, 16, 5, side + 2, 3),
        "one sample": layer(1, 7, 5, 9, 3, padding=1),
        # A lone sample's forward splits the output channels between the
        # threads (im2col.min_split_channels at least), per group.
        "one sample, output channels split, not whole multiples":
            layer(1, 7, 3 * C["im2col.min_split_channels"][0] + 2, 9, 3, padding=1),
        "one sample, output channels split within each of 2 groups":
            layer(1, 4, 4 * C["im2col.min_split_channels"][0] + 2, (6, 7), 3, groups=2, padding=(0, 1)),
        "whole batch in one GEMM (2x2 planes)": layer(5, 24, 20, 4, 3),
        # Tiny planes whose windows read mostly padding: output positions grouped by
        # the taps that reach the image, each group its own product, once the
        # batch gives every group im2col.min_group_columns columns (below
        # that, the plain product).
        "tiny plane, padding taps skipped": layer(grouped, 24, 20, 2, 3, padding=1),
        "tiny plane, too few columns to group": layer(grouped - 1, 24, 20, 2, 3, padding=1),
        # Forward and input gradient by taps, over blocks of channels whose
        # kernels fill im2col.tap_block_bytes: enough channels (float64) for
        # three blocks, the last one short.
        "tiny plane, taps in blocks of channels": layer(grouped, wide, wide, 2, 3, padding=1),
        "tiny plane, groups, asymmetric padding and dilation":
            layer(grouped, 6, 9, (3, 2), 3, groups=3, padding=(2, 1), dilation=(2, 1)),
        "one pixel, padding 2: one tap reaches it": layer(2, 5, 4, 1, 3, padding=2),
        "groups, asymmetric stride, padding and dilation":
            layer(3, 6, 9, (11, 9), (3, 2), groups=3, stride=(2, 1), padding=(0, 2), dilation=(1, 2)),
        "1x1, stride (1, 2)": layer(partials + 1, 8, 6, (5, 7), 1, stride=(1, 2)),
        "kernel as large as the padded input": layer(2, 3, 4, (4, 5), (6, 7), padding=1),
    }


def direct_layers():
    """Forward: blocks of nb output channels (direct.*.forward.nb) and tiles
    of `tile` outputs (along rows, or across them), or runs of outputs along
    the lanes (direct.*.forward_runs); input gradient: the same
    kernel with the channel roles swapped; weight gradient: tiles of r input
    channels (direct.*.weight_grad.r) by nb output channels, over
    weight_partials blocks of samples."""
    nbs = sorted(set(C["direct.float32.forward.nb"] + C["direct.float64.forward.nb"]))
    tiles = sorted(set(C["direct.float32.forward.tile"] + C["direct.float64.forward.tile"]))
    rs = sorted(set(C["direct.float32.weight_grad.r"] + C["direct.float64.weight_grad.r"]))
    widest = max(nbs, default=16)
    partials = C["weight_partials"][0]
    # The weight gradient walks the output plane in chunks of rows whose output
    # gradient (out_w * C_out values a row at least) fits chunk_bytes: 8
    # channels of 4-byte values in 32 columns make a plane at least 2.5 chunks
    # deep (more in float64), the last one shorter.
    chunked_rows = 5 * C["direct.weight_grad.chunk_bytes"][0] // (2 * 32 * 8 * 4) + 1
    layers = {}
    for nb in nbs:  # one channel past each block: the next blocking, or a last block of one
        layers[f"{nb + 1} output channels, rows of {max(tiles, default=16) + 3}"] = \
            layer(2, 5, nb + 1, (6, max(tiles, default=16) + 5), 3)
    # Few input channels: the forward and input gradient take the tiles with
    # the outputs along the lanes (direct.*.forward_runs: nb channels by
    # runs of `lanes` outputs), whose writes the channel-vectorised tiles'
    # scattered stores would outweigh. Rows of two full runs and a short
    # one; one channel past each blocking's nb (the other blocking then
    # needs fewer blocks, so each is taken by one of the layers).
    run_lanes = max(C["direct.float32.forward_runs.lanes"] + C["direct.float64.forward_runs.lanes"], default=16)
    for nb in sorted(set(C["direct.float32.forward_runs.nb"] + C["direct.float64.forward_runs.nb"])):
        layers[f"outputs along the lanes: {nb + 1} output channels, rows of {2 * run_lanes + 3}"] = \
            layer(3, 2, nb + 1, (5, 2 * run_lanes + 3), 3, padding=1)
    # Inputs of at most direct.weight_grad_runs.max_channels channels on planes
    # a run of lanes wide: the weight gradient along the pixels, in tiles of
    # 8 (AVX-512) or 4 (AVX2) output channels by 3 reduction steps. One
    # channel past a block of 8, rows of two runs and a short one, steps not
    # a multiple of 3 (25), strides (its phase planes), groups.
    wg_lanes = max(C["direct.float32.weight_grad_runs.lanes"] + C["direct.float64.weight_grad_runs.lanes"],
                   default=16)
    few = C["direct.weight_grad_runs.max_channels"][0]
    layers.update({
        f"weight gradient along the pixels: {few} input channels, rows of {2 * wg_lanes + 3}":
            layer(partials + 1, few, 9, (5, 2 * wg_lanes + 3), 3, padding=1),
        "weight gradient along the pixels: 25 steps, stride (2, 1)":
            layer(3, 1, 6, (9, wg_lanes + 4), 5, stride=(2, 1)),
        "weight gradient along the pixels: groups": layer(2, 2 * few, 6, (4, wg_lanes + 1), 3, groups=2, padding=1),
    })
    for r in rs:  # one input channel past each weight-gradient tile; as output channels, one past too
        layers[f"{r + 1} input channels"] = layer(partials + 1, r + 1, 7, 9, 3, padding=1)
    layers.update({
        f"{2 * widest + 1} output channels: three blocks, the last of one":
            layer(3, 4, 2 * widest + 1, (5, 11), 3, padding=1),
        f"groups of {widest + 1} output channels: several blocks per group":
            layer(2, 6, 2 * (widest + 1), 7, 3, groups=2, padding=1),
        "one sample: its tiles spread over the threads": layer(1, 6, 10, (9, 37), 3, padding=1),
        "one input channel (the taps become channels)": layer(partials + 1, 1, 6, 12, 5),
        f"{chunked_rows} rows: the weight gradient in several row chunks": layer(2, 3, 8, (chunked_rows, 32), 3,
                                                                                  padding=1),
        "stride (1, 2)": layer(3, 6, 8, (9, 13), 3, stride=(1, 2), padding=1),
        "stride (2, 1)": layer(3, 6, 8, (13, 9), 3, stride=(2, 1), padding=1),
        "strides (3, 2), kernel 3x5": layer(2, 4, 9, (13, 12), (3, 5), stride=(3, 2), padding=(1, 2)),
        "dilation (2, 1)": layer(2, 5, 8, 11, 3, dilation=(2, 1), padding=(2, 1)),
        "dilation (1, 3), kernel 2x3": layer(2, 5, 8, 13, (2, 3), dilation=(1, 3), padding=(0, 3)),
        "padding (0, 2): the input gradient's padding 2, 0": layer(2, 5, 8, 9, 3, padding=(0, 2)),
        "padding (3, 1): beyond the kernel's reach in rows": layer(2, 5, 8, 7, 3, padding=(3, 1)),
        "padding (1, 3): beyond the kernel's reach in columns": layer(2, 5, 8, 7, 3, padding=(1, 3)),
    })
    return layers


def depthwise_layers():
    """One plane per (sample, channel), in tasks of several small planes."""
    return {
        "multiplier 1": layer(3, 5, 5, 9, 3, groups=5, padding=1),
        "multiplier 3, stride (1, 2)": layer(2, 3, 9, (9, 12), 3, groups=3, stride=(1, 2), padding=1),
        "multiplier 2, stride (2, 1), padding (0, 2)": layer(3, 4, 8, (12, 9), 3, groups=4, stride=(2, 1),
                                                            padding=(0, 2)),
        "strides (2, 3), dilation (2, 1)": layer(2, 4, 4, 13, 3, groups=4, stride=(2, 3), dilation=(2, 1),
                                                 padding=2),
        "one input channel, one group": layer(3, 1, 6, 12, 5),
        "large planes, one per task": layer(2, 3, 3, 40, 3, groups=3, padding=1),
        "kernel 1x4, no padding": layer(5, 2, 2, (3, 8), (1, 4), groups=2),
    }


def winograd_layers():
    """Planes winograd.min_plane_tiles tiles wide or wider are transformed in
    place, narrower ones channels-last (for the weight gradient:
    winograd.min_plane_tiles_weight_grad); tiles go in blocks (about
    winograd.block_values values, at least winograd.min_block_tiles tiles),
    or, when a thread's share would be thinner, the forward and input
    gradient split the output channels between the threads (at least
    winograd.min_split_channels each, whole vectors where they divide) while
    each thread's transformed data stays within winograd.by_channels_values,
    and past that, or for the weight gradient, all tiles go in one block; the
    weight gradient sums blocks in weight_partials partial sums and, with
    fewer sums than threads, splits the output channels too."""
    wide = 2 * C["winograd.min_plane_tiles"][0]  # output columns: exactly the least tiles of the plane layout
    wide_wg = 2 * C["winograd.min_plane_tiles_weight_grad"][0]  # the same for the weight gradient
    min_block = C["winograd.min_block_tiles"][0]
    split = C["winograd.min_split_channels"][0]
    by_channels = C["winograd.by_channels_values"][0]
    # 2 threads or more share this layer's few tiles; 128 input channels
    # (and the output's share, 32 / threads) take each thread's transformed
    # data past by_channels_values.
    whole_tiles = by_channels // (16 * (128 + 16)) + 1
    partials = C["weight_partials"][0]
    # A 48 x 48 output holds 576 tiles: more tiles than partial sums hold
    # blocks of min_block_tiles, with 32 channels each way.
    side = 2 * math.isqrt((partials + 1) * min_block // 4)
    return {
        "plane layout at its edge, odd height": layer(2, 3, 5, (7, wide), 3, padding=1),
        "channel layout at its edge": layer(2, 5, 3, (9, wide - 2), 3, padding=1),
        "weight gradient's plane layout at its edge": layer(2, 3, 5, (5, wide_wg), 3, padding=1),
        "weight gradient's channel layout at its edge": layer(2, 5, 3, (5, wide_wg - 2), 3, padding=1),
        "ragged tiles, no padding": layer(3, 4, 6, (8, 9), 3),
        "padding (0, 2)": layer(2, 4, 5, (6, 7), 3, padding=(0, 2)),
        "padding (2, 1)": layer(2, 4, 5, (7, 6), 3, padding=(2, 1)),
        "channel layout, blocks": layer(2 * min_block // 16 + 1, 6, 6, 8, 3, padding=1),
        "more blocks than partial sums": layer(4, 32, 32, side, 3, padding=1),
        "fewer partial sums than threads: output channels split":
            layer(1, 8, 3 * split + 2, (4, wide_wg), 3, padding=1),
        # The forward by channels in the plane layout, a thread's tiles in two
        # blocks (min_block_tiles and the rest), its channels ranges of
        # 16 * 50 / 3 (not whole vectors) on 3 threads.
        "few tiles: output channels split, blocks of whole tile rows":
            layer(1, 8, 3 * split + 2, (2 * (min_block // (wide // 2) + 2), wide), 3, padding=1),
        "few tiles past by_channels_values: one block": layer(1, 128, 32, (2 * whole_tiles, 2), 3, padding=1),
        # At the contract's edges: one axis off at a time.
        "stride (1, 2)": layer(2, 4, 5, 8, 3, stride=(1, 2), padding=1),
        "dilation (2, 1)": layer(2, 4, 5, 8, 3, dilation=(2, 1), padding=1),
        "padding (3, 0)": layer(2, 4, 5, 8, 3, padding=(3, 0)),
        "padding (0, 3)": layer(2, 4, 5, 8, 3, padding=(0, 3)),
        "kernel 3x2": layer(2, 4, 5, 8, (3, 2), padding=1),
        "groups 2": layer(2, 4, 6, 8, 3, groups=2, padding=1),
    }


TABLES = {"im2col": im2col_layers(), "direct": direct_layers(), "depthwise": depthwise_layers(),
          "winograd": winograd_layers()}
# float64 checks the arithmetic to rounding; the direct kernels have float32
# tables of their own, and Winograd runs in float32 only.
DTYPES = {"im2col": (torch.float64,), "direct": (torch.float64, torch.float32), "depthwise": (torch.float64,),
          "winograd": (torch.float32,)}
SWEEP = [(route, name) for route in ROUTES for name in TABLES[route]]


# -------------------------------------------------------------------- checking

def tensors(lay, dtype, seed=0):
    """Input, weight, bias and an output gradient, drawn in float64 and
    rounded to dtype; the weight scaled so that outputs are of unit size."""
    g = torch.Generator().manual_seed(seed)
    fan_in = math.prod(lay.weight[1:]) or 1
    x = torch.randn(lay.input, generator=g, dtype=torch.float64)
    w = torch.randn(lay.weight, generator=g, dtype=torch.float64) / math.sqrt(fan_in)
    b = torch.randn(lay.weight[0], generator=g, dtype=torch.float64)
    out_shape = F.conv2d(x, w, b, **lay.kwargs).shape
    go = torch.randn(out_shape, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (x, w, b, go)]


def run(conv, x, w, b, go, kwargs):
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    out = conv(*leaves, **kwargs)
    return [out.detach(), *torch.autograd.grad(out, leaves, go)]


def reference(lay, x, w, b, go):
    """torch's output and gradients in float64, and the same computed on the
    absolute values: the scale of each result's terms, for float32's bound."""
    x, w, b, go = (t.double() for t in (x, w, b, go))
    exact = run(F.conv2d, x, w, b, go, lay.kwargs)
    scale = run(F.conv2d, x.abs(), w.abs(), b.abs(), go.abs(), lay.kwargs)
    return exact, scale


# float32 results within this many float32 eps of the sum of their terms'
# magnitudes from float64's: sums rounded in float32 along the way stay
# within a few eps of it, Winograd's transforms (which add up to 4 terms
# before the products and after them) a few more. A wrong partition, a lost
# remainder, a block counted twice is off by whole terms: many thousands.
EPS_BOUND = {"direct": 8, "im2col": 8, "depthwise": 8, "winograd": 32}

NAMES = ("output", "input gradient", "weight gradient", "bias gradient")


def assert_matches(route, results, exact, scale, dtype, where):
    for name, ours, ref, s in zip(NAMES, results, exact, scale):
        if dtype == torch.float64:
            torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10, msg=lambda m: f"{where}, {name}: {m}")
        else:
            err = (ours.double() - ref).abs()
            bound = EPS_BOUND[route] * torch.finfo(dtype).eps * s + 1e-30
            worst = (err / bound).max().item() if err.numel() else 0.0
            assert worst <= 1, f"{where}, {name}: {worst * EPS_BOUND[route]:.1f} eps of its terms' scale"


@pytest.mark.parametrize("route, name", SWEEP, ids=[f"{r}: {n}" for r, n in SWEEP])
def test_forced_route_matches_torch_on_every_thread_count(route, name):
    lay = TABLES[route][name]
    for dtype in DTYPES[route]:
        x, w, b, go = tensors(lay, dtype)
        exact, scale = reference(lay, x, w, b, go)
        with custom_conv.forced_algorithm(route):
            plan = custom_conv.explain_conv2d(x, w, **lay.kwargs)
            for pass_name in PASSES:  # the forced route runs every pass it can
                if contract(route, lay, pass_name, dtype):
                    assert plan[pass_name].algorithm == route, plan
            for threads in THREADS:
                with num_threads(threads):
                    results = run(CF.conv2d, x, w, b, go, lay.kwargs)
                assert_matches(route, results, exact, scale, dtype, f"{dtype}, {threads} threads")


def test_every_route_has_layers_it_runs_in_every_pass():
    """The sweep is not vacuous: each route's table has layers the route
    computes in every pass (on this CPU's kernels)."""
    for route in ROUTES:
        if route == "direct" and KERNELS == "baseline":
            continue
        runs_all = [name for name, lay in TABLES[route].items()
                    if all(contract(route, lay, p, DTYPES[route][0]) for p in PASSES)]
        assert len(runs_all) >= 3, (route, runs_all)


CONTRACT_DTYPES = (torch.float64, torch.float32, torch.bfloat16)


@pytest.mark.parametrize("route", ROUTES)
def test_each_route_accepts_exactly_what_its_contract_says(route):
    """Over every layer of every table (so across every route's limits), in
    three dtypes: where the contract says the route computes a pass,
    forcing it runs it there; where not, the chooser's route runs it."""
    for lay in (lay for table in TABLES.values() for lay in table.values()):
        for dtype in CONTRACT_DTYPES:
            x = torch.empty(lay.input, dtype=dtype)
            w = torch.empty(lay.weight, dtype=dtype)
            with custom_conv.forced_algorithm(route):
                plan = custom_conv.explain_conv2d(x, w, **lay.kwargs)
            for pass_name in PASSES:
                runs = plan[pass_name].algorithm == route
                forced = "forced by the user" in plan[pass_name].reason
                assert runs == forced or route == "im2col" and runs, plan[pass_name]
                assert forced == contract(route, lay, pass_name, dtype), (lay, dtype, pass_name, plan[pass_name])


def test_forcing_is_undone_after_the_block_and_refuses_unknown_names():
    lay = TABLES["depthwise"]["multiplier 1"]
    x, w = torch.empty(lay.input), torch.empty(lay.weight)
    before = custom_conv.explain_conv2d(x, w, **lay.kwargs)
    with custom_conv.forced_algorithm("im2col"):
        assert {c.algorithm for c in custom_conv.explain_conv2d(x, w, **lay.kwargs).values()} == {"im2col"}
    assert custom_conv.explain_conv2d(x, w, **lay.kwargs) == before
    with pytest.raises(ValueError, match="no conv2d algorithm called 'fft'"):
        with custom_conv.forced_algorithm("fft"):
            pass

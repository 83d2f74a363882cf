"""Our CPU GEMM (csrc/cpu/gemm/), alone, against float64 products: every
shape edge of its blocking (the micro-kernel's tile, mr x nr; the slices of
kc reduction steps; the blocks of nc columns), every layout of its operands
(transposed views read in place, C written through any strides), batches,
alpha, beta and a bias per row, every dtype, on 1 to 8 threads, and the
same bits whatever the thread count. The sizes come from the blocking the
GEMM reports (torch.ops.custom_conv.cpu_gemm_blocking), so they follow it
when the cache sizes or the tiles change. test_cpu_kernels.py runs this
file again at each lesser instruction-set level."""

import pytest
import torch

from helpers import dtypes, num_threads

gemm = torch.ops.custom_conv.cpu_gemm


def blocking(dtype):
    mr, nr, kc, nc, _, _ = torch.ops.custom_conv.cpu_gemm_blocking(torch.float64 if dtype == torch.float64
                                                                   else torch.float32)
    return mr, nr, kc, nc


def edges(dtype):
    """(m, n, k) on each side of each edge: one row, a tile, a tile and a
    row; one column, a panel, a panel and a column past the columns' block;
    one step, a slice, a slice and a step."""
    mr, nr, kc, nc = blocking(dtype)
    # Products of up to 16 columns read A as rows of dot products; those of
    # 17 run as C^T = B^T A^T (fewer lanes wasted), over one slice and over
    # several, whose sums wait in a buffer for C.
    return [(1, 1, 1), (mr, nr, kc), (mr + 1, nr + 1, kc + 1), (2 * mr - 1, nc + nr + 3, 2 * kc + 5),
            (3, 2 * nr - 1, 7), (mr * 5 + 2, 17, kc - 1), (mr * 5 + 2, 17, 2 * kc + 5), (mr * 5 + 2, 16, 2 * kc + 7),
            (37, 1, 300)]


def random(shape, dtype, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# Each product within this many eps (of its dtype) of the sum of its terms'
# magnitudes: a float sum of k terms rounds at most ~k eps of it, and
# blocked sums stay within a few eps in practice; half and bfloat16 are
# rounded once, at the end, from a float sum.
EPS = {torch.float64: 16, torch.float32: 16, torch.bfloat16: 2, torch.float16: 2}


def assert_close_to_exact(out, exact, scale, dtype):
    err = (out.double() - exact).abs()
    bound = EPS[dtype] * torch.finfo(dtype).eps * scale + 1e-300
    worst = (err / bound).max().item()
    assert worst <= 1, f"{worst * EPS[dtype]:.1f} eps of the terms' scale"


LAYOUTS = ["a b c", "a^T b", "a b^T", "a^T b^T c^T"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", dtypes("float64", "float32", "bfloat16", "float16"))
def test_every_blocking_edge_and_layout_matches_float64(dtype, layout):
    for i, (m, n, k) in enumerate(edges(dtype)):
        a, b = random((m, k), dtype, i), random((k, n), dtype, 100 + i)
        if "a^T" in layout:  # stored (k, m), read through its transpose
            a = a.t().contiguous().t()
        if "b^T" in layout:
            b = b.t().contiguous().t()
        c = random((m, n), dtype, 200 + i)
        if "c^T" in layout:
            c = c.t().contiguous().t()
        bias = random((m,), dtype, 300 + i)
        exact = a.double() @ b.double()
        scale = a.double().abs() @ b.double().abs()
        assert_close_to_exact(gemm(a, b), exact, scale, dtype)
        out = gemm(a, b, c, 0.5, 2.0, bias)
        assert out.stride() == c.stride()  # C written in its own layout
        assert_close_to_exact(out, 0.5 * exact + 2 * c.double() + bias.double()[:, None],
                              0.5 * scale + 2 * c.double().abs() + bias.double().abs()[:, None], dtype)


@pytest.mark.parametrize("dtype", dtypes("float64", "float32"))
def test_batches_of_strided_operands_match_float64(dtype):
    """The Winograd route's form: 16 products in one call, B a transposed
    view, C accumulated (beta = 1)."""
    mr, nr, kc, _ = blocking(dtype)
    a = random((16, mr + 3, kc + 9), dtype, 0)
    b = random((16, nr + 5, kc + 9), dtype, 1).transpose(1, 2)
    c = random((16, mr + 3, nr + 5), dtype, 2)
    exact = torch.bmm(a.double(), b.double()) + c.double()
    scale = torch.bmm(a.double().abs(), b.double().abs()) + c.double().abs()
    assert_close_to_exact(gemm(a, b, c, 1.0, 1.0), exact, scale, dtype)


@pytest.mark.parametrize("dtype", dtypes("float64", "float32"))
def test_operands_whose_lines_are_whole_pages_apart_match_float64(dtype):
    """Lines a multiple of 4 KiB apart (Winograd's blocks of 1,024 tiles),
    which share a cache set: here A's rows and B's columns (B stored
    transposed) are 4 and 8 KiB apart, each product crossing a slice of kc
    steps and ending in partial micro-panels."""
    mr, nr, kc, _ = blocking(dtype)
    k = kc + 37
    for pages in (1, 2):
        line = pages * 4096 // dtype.itemsize
        a = random((2, 2 * mr + 3, line), dtype, pages)[:, :, :k]
        b = random((2, nr + 5, line), dtype, 10 + pages)[:, :, :k].transpose(1, 2)
        exact = torch.bmm(a.double(), b.double())
        assert_close_to_exact(gemm(a, b), exact, torch.bmm(a.double().abs(), b.double().abs()), dtype)


@pytest.mark.parametrize("threads", [1, 2, 3, 8], ids=lambda n: f"{n} threads")
@pytest.mark.parametrize("dtype", dtypes("float64", "float32"))
def test_results_are_the_same_bits_on_any_number_of_threads(dtype, threads):
    """Threads take blocks of C; each element is summed slice by slice in
    the same order whatever the blocks, so the bits do not change."""
    mr, nr, kc, nc = blocking(dtype)
    shapes = [(4 * mr + 3, 3 * nc + 7, 2 * kc + 3), (7 * mr, nr + 1, kc + 1), (2, 5 * nc, kc), (300, 4, kc + 5)]
    for i, (m, n, k) in enumerate(shapes):
        a, b = random((m, k), dtype, i), random((k, n), dtype, 10 + i)
        with num_threads(1):
            one = gemm(a, b)
        with num_threads(threads):
            many = gemm(a, b)
        assert torch.equal(one, many), (m, n, k)
        assert_close_to_exact(many, a.double() @ b.double(), a.double().abs() @ b.double().abs(), dtype)


def test_a_product_with_nothing_to_sum_is_beta_c_plus_bias():
    c, bias = torch.randn(3, 4), torch.randn(3)
    out = gemm(torch.empty(3, 0), torch.empty(0, 4), c, 1.0, 0.5, bias)
    torch.testing.assert_close(out, 0.5 * c + bias[:, None])
    assert torch.equal(gemm(torch.empty(3, 0), torch.empty(0, 4)), torch.zeros(3, 4))


def test_nan_in_c_is_not_read_when_beta_is_zero():
    """beta = 0 means C is written, not read: the routes hand uninitialised
    scratch to the first product of a sum."""
    a, b = torch.randn(5, 7), torch.randn(7, 6)
    c = torch.full((5, 6), float("nan"))
    torch.testing.assert_close(gemm(a, b, c, 1.0, 0.0), a @ b)


def test_shapes_that_do_not_match_are_refused():
    with pytest.raises(RuntimeError, match="do not match"):
        gemm(torch.randn(3, 4), torch.randn(5, 6))
    with pytest.raises(RuntimeError, match="one dtype"):
        gemm(torch.randn(3, 4), torch.randn(4, 6, dtype=torch.float64))


@pytest.mark.parametrize("dtype", dtypes("float64", "float32"))
def test_the_blocking_follows_the_cache_sizes_it_reports(dtype):
    """kc: an A micro-panel (mr x kc) fills three quarters of the L1 data
    cache; nc: a packed block of B (kc x nc) half of L2 (within their clamps)."""
    mr, nr, kc, nc, l1, l2 = torch.ops.custom_conv.cpu_gemm_blocking(dtype)
    size = dtype.itemsize
    assert kc % 8 == 0 and nc % nr == 0
    assert kc == max(64, min(1024, l1 * 3 // 4 // (mr * size) // 8 * 8))
    assert kc * nc * size <= l2 // 2 or nc == 4 * nr
    assert all(v > 0 for v in (mr, nr, kc, nc, l1, l2))

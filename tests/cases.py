"""The behaviours conv2d and the poolings must have, as data: each case is
named for what it pins down and holds only shapes and the keyword arguments
of torch.nn.functional. test_conv2d.py, test_max_pool2d.py and
test_avg_pool2d.py check every case against torch on every device; other
tests pick cases out by name.
"""
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ConvCase:
    input: tuple  # (N, C_in, H, W)
    weight: tuple  # (C_out, C_in / groups, kH, kW)
    kwargs: dict  # stride, padding, dilation, groups, as F.conv2d takes them
    tags: frozenset = field(default=frozenset())


@dataclass(frozen=True)
class PoolCase:
    input: tuple  # (N, C, H, W), or (C, H, W) unbatched
    kwargs: dict  # the keyword arguments of F.max_pool2d, F.avg_pool2d or F.adaptive_avg_pool2d


# Tag of a case whose sums run to hundreds of products: float32 rounds them
# further from torch than the bound for short sums (helpers.tolerance).
LONG_SUMS = "long sums"


def conv(input, weight, tags=(), **kwargs):
    return ConvCase(input, weight, kwargs, frozenset(tags))


def pool(input, **kwargs):
    return PoolCase(input, kwargs)


CONV2D_CASES = {
    "plain 3x3": conv((2, 3, 8, 8), (4, 3, 3, 3)),
    "1x1 projection": conv((2, 8, 5, 5), (4, 8, 1, 1)),
    "padding keeps size": conv((2, 3, 7, 7), (5, 3, 3, 3), padding=1),
    "stride 2 with padding": conv((2, 3, 9, 9), (4, 3, 3, 3), stride=2, padding=1),
    "stride does not divide input": conv((1, 2, 10, 11), (3, 2, 3, 3), stride=3),
    "stride 3, dilation (2, 1): windows overlap in rows and tile the columns":
        conv((4, 2, 5, 5), (3, 2, 3, 3), stride=3, padding=2, dilation=(2, 1)),
    "asymmetric kernel, stride, padding and dilation":
        conv((2, 3, 12, 10), (4, 3, 3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 3)),
    "dilation 2": conv((1, 2, 11, 11), (3, 2, 3, 3), dilation=2, padding=2),
    "kernel as large as padded input": conv((2, 2, 4, 5), (3, 2, 6, 7), padding=1),
    "output of one pixel": conv((2, 3, 5, 5), (2, 3, 5, 5)),
    "groups": conv((2, 6, 7, 7), (9, 2, 3, 3), groups=3, padding=1),
    "groups with asymmetric kernel, stride and padding":
        conv((2, 4, 9, 7), (6, 2, 3, 2), stride=(2, 1), padding=(1, 0), groups=2),
    "depthwise": conv((2, 4, 8, 8), (4, 1, 3, 3), groups=4, padding=1),
    "depthwise multiplier 2, stride 2": conv((2, 3, 9, 9), (6, 1, 3, 3), groups=3, stride=2, padding=1),
    "depthwise, strides 2 and 3, dilation 2":
        conv((2, 4, 11, 10), (8, 1, 3, 3), groups=4, stride=(2, 3), padding=2, dilation=2),
    "7x7 stride 2 stem": conv((1, 3, 20, 20), (4, 3, 7, 7), stride=2, padding=3),
    # Rows of 16 and more column pairs: the stride-2 copy into phase planes splits them a vector at a time.
    "stride 2 on long rows": conv((2, 3, 5, 35), (4, 3, 3, 3), stride=2, padding=1),
    "depthwise stride 2 on long rows": conv((2, 4, 4, 32), (4, 1, 3, 3), groups=4, stride=2),
    "padding larger than kernel": conv((1, 2, 4, 4), (2, 2, 2, 2), padding=3),
    "single input channel": conv((3, 1, 6, 6), (2, 1, 5, 5)),
    "same padding, odd kernel": conv((2, 3, 7, 8), (4, 3, 3, 5), padding="same"),
    "same padding, even kernel and dilation": conv((2, 3, 7, 8), (4, 3, 4, 2), padding="same", dilation=(1, 3)),
    "valid padding": conv((2, 3, 7, 8), (4, 3, 3, 3), padding="valid"),
    "tuple of one int": conv((2, 3, 8, 8), (4, 3, 3, 3), stride=(2,), padding=[1]),
    "empty batch": conv((0, 3, 8, 8), (4, 3, 3, 3), padding=1),
    # 65 x 630 weights and 630 x 81 columns: more than one GEMM tile each way, none of them full.
    "several GEMM tiles, ragged edges": conv((2, 70, 9, 9), (65, 70, 3, 3), padding=1, tags=[LONG_SUMS]),
}

MAX_POOL2D_CASES = {
    "2x2 stride 2": pool((2, 3, 8, 8), kernel_size=2),
    "3x3 stride 2 padding 1": pool((2, 3, 9, 9), kernel_size=3, stride=2, padding=1),
    "overlapping windows": pool((2, 2, 7, 7), kernel_size=3, stride=1),
    "ceil mode keeps partial last window": pool((2, 2, 7, 7), kernel_size=2, ceil_mode=True),
    "ceil mode drops window starting in padding": pool((1, 2, 6, 6), kernel_size=3, stride=3, padding=1,
                                                       ceil_mode=True),
    "ceil mode adds nothing where the windows fit exactly": pool((2, 3, 9, 9), kernel_size=3, stride=2, padding=1,
                                                                 ceil_mode=True),
    "asymmetric kernel stride padding": pool((2, 3, 10, 9), kernel_size=(3, 2), stride=(2, 1), padding=(1, 0)),
    "asymmetric kernel stride padding, ceil mode keeps a partial row of windows":
        pool((2, 2, 10, 7), kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), ceil_mode=True),
    "dilation": pool((1, 3, 11, 11), kernel_size=3, stride=2, padding=1, dilation=2),
    "dilation with ceil mode": pool((1, 2, 10, 10), kernel_size=2, stride=3, dilation=(2, 3), ceil_mode=True),
    "window covers whole input": pool((2, 3, 4, 5), kernel_size=(4, 5)),
    "padding of half the window, the most allowed": pool((1, 1, 5, 5), kernel_size=5, stride=1, padding=2),
    "stride larger than kernel": pool((2, 2, 9, 9), kernel_size=2, stride=4),
    "empty batch": pool((0, 3, 8, 8), kernel_size=2),
    "12 planes of 32x32: more outputs than one block of GPU threads":
        pool((3, 4, 32, 32), kernel_size=3, stride=2, padding=1, ceil_mode=True),
}

# Windows of padding only, while the plane has input: they depend on no
# input, and the index torch reports for them, first row * W + first column,
# names no element of theirs (past the plane, or in the next row when only
# the columns are padding), so their gradient must go nowhere.
MAX_POOL2D_PADDING_ONLY_CASES = {
    "columns": pool((1, 1, 12, 1), kernel_size=(1, 3), stride=(2, 3), padding=(0, 1), dilation=(2, 2),
                    ceil_mode=True),
    "columns, 2 rows": pool((2, 3, 12, 1), kernel_size=(2, 3), stride=(1, 3), padding=(1, 1), dilation=(1, 2),
                            ceil_mode=True),
    "rows": pool((1, 2, 1, 9), kernel_size=(3, 2), stride=(3, 2), padding=(1, 0), dilation=(2, 1), ceil_mode=True),
}

# F.avg_pool2d. With ceil_mode a last window may hang past the far padding:
# count_include_pad then counts only the padding it covers, so its divisor is
# smaller than the kernel's area.
AVG_POOL2D_CASES = {
    "2x2 stride 2": pool((2, 3, 8, 8), kernel_size=2),
    "3x3 stride 2 padding 1, padding counted": pool((2, 3, 9, 9), kernel_size=3, stride=2, padding=1),
    "3x3 stride 2 padding 1, padding not counted":
        pool((2, 3, 9, 9), kernel_size=3, stride=2, padding=1, count_include_pad=False),
    "overlapping windows": pool((2, 2, 7, 7), kernel_size=3, stride=1),
    "ceil mode keeps a partial last window": pool((2, 2, 7, 7), kernel_size=2, ceil_mode=True),
    "ceil mode, last window past the padding, padding counted":
        pool((1, 2, 6, 6), kernel_size=3, stride=2, padding=1, ceil_mode=True),
    "ceil mode, last window past the padding, padding not counted":
        pool((1, 2, 6, 6), kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    "ceil mode drops a window that would start in the far padding":
        pool((1, 2, 5, 5), kernel_size=2, stride=2, padding=1, ceil_mode=True),
    "divisor_override": pool((2, 3, 7, 7), kernel_size=3, stride=2, padding=1, divisor_override=5),
    "divisor_override with ceil mode":
        pool((1, 2, 6, 6), kernel_size=3, stride=2, padding=1, ceil_mode=True, divisor_override=2),
    "asymmetric kernel stride padding, padding not counted":
        pool((2, 3, 10, 9), kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), count_include_pad=False),
    "asymmetric, ceil mode hangs past the padding in both directions":
        pool((2, 2, 10, 7), kernel_size=(3, 2), stride=(2, 3), padding=(1, 1), ceil_mode=True),
    "window covers whole input": pool((2, 3, 4, 5), kernel_size=(4, 5)),
    "padding of half the window, the most allowed, not counted":
        pool((1, 1, 5, 5), kernel_size=5, stride=1, padding=2, count_include_pad=False),
    "stride larger than kernel": pool((2, 2, 9, 9), kernel_size=2, stride=4),
    "unbatched": pool((3, 7, 7), kernel_size=3, stride=2, padding=1, count_include_pad=False),
    "empty batch": pool((0, 3, 8, 8), kernel_size=2),
    "12 planes of 32x32: more outputs than one block of GPU threads":
        pool((3, 4, 32, 32), kernel_size=3, stride=2, padding=1, ceil_mode=True),
}

# F.adaptive_avg_pool2d: output i averages input rows floor(i * H / h) to
# ceil((i + 1) * H / h), so windows overlap or differ in size wherever h does
# not divide H.
ADAPTIVE_AVG_POOL2D_CASES = {
    "7 -> 3": pool((2, 3, 7, 7), output_size=3),
    "5x5 -> (2, 4)": pool((2, 3, 5, 5), output_size=(2, 4)),
    "global, 1x1": pool((2, 4, 7, 7), output_size=1),
    "3 -> 5, more outputs than inputs": pool((1, 2, 3, 3), output_size=5),
    "8 -> 4, windows that divide the input": pool((2, 2, 8, 8), output_size=4),
    "None keeps the input's width": pool((2, 2, 6, 9), output_size=(4, None)),
    "same size": pool((1, 2, 5, 5), output_size=5),
    "unbatched": pool((3, 10, 6), output_size=(4, 4)),
    "empty batch": pool((0, 3, 8, 8), output_size=2),
    "12 planes of 32x32 -> 7": pool((3, 4, 32, 32), output_size=7),
}

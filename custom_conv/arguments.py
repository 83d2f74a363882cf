"""torch's rules for the arguments of the convolutions and poolings that are not
tensor values, with torch's exception types and words: the types its
argument parser takes (checked for every argument before any value), then
the lengths its functions take. The values themselves (positive strides,
padding within half the window, ...) are checked once, by the kernels
(csrc/geometry.cpp).

The parser takes for a "tuple of ints" an int, a NumPy integer or a 0-dim
integer tensor (never a bool, a float or None), or a tuple or list whose
first element is one of those (later elements may also be bools); a list
that passes on its first element but not on a later one fails while being
unpacked, with its own message. conv1d and conv2d have two signatures
(numeric or string padding), so a type they do not take is "an invalid
combination of arguments"; the transposed convolutions and the poolings name
the argument. 1-D convolutions are checked with their own lengths (one value
each), then run as 2-D ones of height 1.
"""
import numbers
import operator
import warnings

import torch

CONV_SIGNATURES = (
    " * (Tensor input, Tensor weight, Tensor bias = None, tuple of ints stride = 1, tuple of ints padding = 0, "
    "tuple of ints dilation = 1, int groups = 1)\n"
    " * (Tensor input, Tensor weight, Tensor bias = None, tuple of ints stride = 1, str padding = \"valid\", "
    "tuple of ints dilation = 1, int groups = 1)\n")
MAX_POOL2D_POSITIONS = {"input": 1, "kernel_size": 2, "stride": 3, "padding": 4, "dilation": 5, "ceil_mode": 6}
AVG_POOL2D_POSITIONS = {"input": 1, "kernel_size": 2, "stride": 3, "padding": 4, "ceil_mode": 5,
                        "count_include_pad": 6, "divisor_override": 7}
PADDING_STRINGS = ("valid", "same")


def _type_name(value):
    cls = type(value)
    return f"numpy.{cls.__name__}" if cls.__module__ == "numpy" else cls.__name__


def _is_bool(value):
    return isinstance(value, bool) or _type_name(value) in ("numpy.bool", "numpy.bool_")


def _is_int(value, bool_too=False):
    """Whether the parser takes `value` as one int (NumPy's integers are numbers.Integral)."""
    if _is_bool(value):
        return bool_too
    if isinstance(value, (numbers.Integral, torch.SymInt)):
        return True
    return (isinstance(value, torch.Tensor) and value.dim() == 0
            and not value.dtype.is_floating_point and not value.dtype.is_complex)


def _int_list_failure(value):
    """None if the parser would take `value` as a tuple of ints; else
    (position, type name) of the first element it would not take, position
    None for the value itself."""
    if isinstance(value, (tuple, list, torch.Size)):
        for position, item in enumerate(value):
            if not _is_int(item, bool_too=position > 0):
                return position, _type_name(item)
        return None
    return None if _is_int(value) else (None, _type_name(value))


def _unpack_error(op, name, position, type_name):
    return TypeError(f"{op}(): argument '{name}' failed to unpack the object at pos {position + 1} with error "
                     f"\"type must be tuple of ints,but got {type_name}\"")


def _ints(value):
    """A tuple of ints as a list of Python ints (or SymInts, when traced)."""
    items = value if isinstance(value, (tuple, list, torch.Size)) else [value]
    return [item if isinstance(item, torch.SymInt) else operator.index(item) for item in items]


def _plain_pair(value, dims=2):
    """(height, width) for the common spellings, an int or a tuple or list of
    one or `dims` ints (bools excluded: type(True) is bool), else None; with
    dims=1 a list of the one value. A model calls these functions for every
    layer, so the general rules below, at tens of microseconds, run only for
    everything else."""
    if type(value) is int:
        return [value] * dims
    if type(value) in (tuple, list) and 1 <= len(value) <= dims and all(type(v) is int for v in value):
        return [value[0], value[-1]][2 - dims:]
    return None


def _lengths_checked(name, value, dims):
    """A tuple of ints as `dims` values, with torch's error for any other length."""
    values = _ints(value)
    if len(values) not in (1, dims):
        raise RuntimeError(f"expected {name} to be a single integer value or a list of {dims} values to match the "
                           f"convolution dimensions, but got {name}={values}")
    return values * dims if len(values) == 1 else values


def conv2d_arguments(input, weight, bias, stride, padding, dilation, groups, op="conv2d", dims=2):
    """Checks F.conv2d's (or, with op="conv1d" and dims=1, F.conv1d's)
    arguments as torch does; returns stride, padding and dilation as lists of
    `dims` values, padding possibly a string."""
    def invalid(name, value):
        got = ", ".join(_type_name(t) for t in (input, weight, bias))
        return TypeError(f"{op}() received an invalid combination of arguments - got ({got}, {name}="
                         f"{_type_name(value)}), but expected one of:\n{CONV_SIGNATURES}")

    if not isinstance(input, torch.Tensor) or not isinstance(weight, torch.Tensor) \
            or not (bias is None or isinstance(bias, torch.Tensor)):
        got = ", ".join(_type_name(t) for t in (input, weight, bias))
        raise TypeError(f"{op}() received an invalid combination of arguments - got ({got}), but expected "
                        f"one of:\n{CONV_SIGNATURES}")
    plain = [_plain_pair(value, dims) for value in (stride, padding, dilation)]
    if type(groups) is int and None not in plain:
        return plain[0], plain[1], plain[2], groups
    lists = {"stride": stride, "dilation": dilation}
    if not isinstance(padding, str):
        lists["padding"] = padding
    for name, value in lists.items():
        failure = _int_list_failure(value)
        if failure is not None and failure[0] not in (None, 0):
            raise _unpack_error(op, name, *failure)
        if failure is not None:
            raise invalid(name, value)
    if not _is_int(groups):
        raise invalid("groups", groups)
    pairs = {name: _lengths_checked(name, value, dims) for name, value in lists.items()}
    if isinstance(padding, str):
        if padding not in PADDING_STRINGS:
            raise RuntimeError(f"Invalid padding string: {padding!r}")
        if padding == "same" and any(s != 1 for s in pairs["stride"]):
            raise RuntimeError("padding='same' is not supported for strided convolutions")
        pairs["padding"] = padding
    return pairs["stride"], pairs["padding"], pairs["dilation"], operator.index(groups)


CONV_TRANSPOSE_POSITIONS = {"input": 1, "weight": 2, "bias": 3, "stride": 4, "padding": 5, "output_padding": 6,
                            "groups": 7, "dilation": 8}


def conv_transpose_arguments(op, dims, input, weight, bias, stride, padding, output_padding, groups, dilation,
                             positional=0):
    """Checks F.conv_transpose2d's (op="conv_transpose2d", dims=2) or
    F.conv_transpose1d's arguments' types and lengths as torch does: one
    signature, so a bad type is named. torch's words differ for an argument
    passed by position, which a Python function cannot see: `positional`
    says how many were (torch's modules pass all 8; a call of
    custom_conv.functional is taken to pass them by keyword. Under enabled()
    torch's parser rejects a bad type before the mode sees the call). Returns stride,
    padding, output_padding and dilation as lists of `dims` values, and
    groups; their values are functional.py's to check, in torch's order."""
    def argument(name):
        position = CONV_TRANSPOSE_POSITIONS[name]
        return f"{op}(): argument '{name}'" + (f" (position {position})" if position <= positional else "")

    for name, value in (("input", input), ("weight", weight), ("bias", bias)):
        if not isinstance(value, torch.Tensor) and not (name == "bias" and value is None):
            raise TypeError(f"{op}(): argument '{name}' (position {CONV_TRANSPOSE_POSITIONS[name]}) must be "
                            f"Tensor, not {_type_name(value)}")
    lists = {"stride": stride, "padding": padding, "output_padding": output_padding, "dilation": dilation}
    plain = {name: _plain_pair(value, dims) for name, value in lists.items()}
    if type(groups) is not int or None in plain.values():
        for name, value in lists.items():
            failure = _int_list_failure(value)
            if failure is None:
                continue
            position, type_name = failure
            if position not in (None, 0):
                raise _unpack_error(op, name, position, type_name)
            if position == 0 and CONV_TRANSPOSE_POSITIONS[name] <= positional:
                raise TypeError(f"{argument(name)} must be tuple of ints, but found element of type {type_name} "
                                f"at pos 0")
            raise TypeError(f"{argument(name)} must be tuple of ints, not {_type_name(value)}")
        if not _is_int(groups):
            raise TypeError(f"{argument('groups')} must be int, not {_type_name(groups)}")
        plain = {name: _lengths_checked(name, value, dims) for name, value in lists.items()}
        groups = operator.index(groups)
    return plain["stride"], plain["padding"], plain["output_padding"], groups, plain["dilation"]


def _check_pool_int_lists(op, lists, positions):
    """Each value of `lists` (name -> value) a tuple of ints, else the
    TypeError torch's parser gives max_pool2d and avg_pool2d for the first
    that is not (positions: each argument's position, as torch names it)."""
    for name, value in lists.items():
        failure = _int_list_failure(value)
        if failure is None:
            continue
        position, type_name = failure
        argument = f"{op}(): argument '{name}' (position {positions[name]}) must be tuple of ints"
        if position is None:
            raise TypeError(f"{argument}, not {_type_name(value)}")
        if position == 0:
            raise TypeError(f"{argument}, but found element of type {type_name} at pos 0")
        raise _unpack_error(op, name, position, type_name)


def max_pool2d_arguments(op, input, kernel_size, stride, padding, dilation, ceil_mode):
    """Checks F.max_pool2d's arguments as torch does (op: "max_pool2d" or
    "max_pool2d_with_indices", the function torch names); returns kernel_size,
    stride, padding and dilation as (height, width) lists."""
    def must_be(name, what, value):
        return TypeError(f"{op}(): argument '{name}' (position {MAX_POOL2D_POSITIONS[name]}) must be {what}, not "
                         f"{_type_name(value)}")

    if not isinstance(input, torch.Tensor):
        raise must_be("input", "Tensor", input)
    plain = [_plain_pair(value) for value in (kernel_size, kernel_size if stride is None else stride, padding,
                                              dilation)]
    if type(ceil_mode) is bool and None not in plain:
        return tuple(plain)
    if stride is None:
        stride = ()
    lists = {"kernel_size": kernel_size, "stride": stride, "padding": padding, "dilation": dilation}
    _check_pool_int_lists(op, lists, MAX_POOL2D_POSITIONS)
    if not _is_bool(ceil_mode):
        raise must_be("ceil_mode", "bool", ceil_mode)
    lengths = {"kernel_size": ((1, 2), "must either be a single int, or a tuple of two ints"),
               "stride": ((0, 1, 2), "must either be omitted, a single int, or a tuple of two ints"),
               "padding": ((1, 2), "must either be a single int, or a tuple of two ints"),
               "dilation": ((1, 2), "must be either a single int, or a tuple of two ints")}
    pairs = {}
    for name, value in lists.items():
        values = _ints(value)
        allowed, words = lengths[name]
        if len(values) not in allowed:
            raise RuntimeError(f"max_pool2d: {name} {words}")
        pairs[name] = values * 2 if len(values) == 1 else values
    if not pairs["stride"]:
        pairs["stride"] = pairs["kernel_size"]
    return pairs["kernel_size"], pairs["stride"], pairs["padding"], pairs["dilation"]


def avg_pool2d_arguments(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """Checks F.avg_pool2d's arguments as torch does (its parser takes only
    true bools for the flags); returns kernel_size, stride and padding as
    (height, width) lists and divisor_override as an int or None. F.avg_pool2d
    is the parser itself, which names an argument's position only when it was
    given by position; we cannot tell, and name it as for a positional call."""
    def must_be(name, what, value):
        return TypeError(f"avg_pool2d(): argument '{name}' (position {AVG_POOL2D_POSITIONS[name]}) must be {what}, "
                         f"not {_type_name(value)}")

    if not isinstance(input, torch.Tensor):
        raise must_be("input", "Tensor", input)
    plain = [_plain_pair(value) for value in (kernel_size, kernel_size if stride is None else stride, padding)]
    if (type(ceil_mode) is bool and type(count_include_pad) is bool
            and (divisor_override is None or type(divisor_override) is int) and None not in plain):
        return (*plain, divisor_override)
    if stride is None:
        stride = ()
    lists = {"kernel_size": kernel_size, "stride": stride, "padding": padding}
    _check_pool_int_lists("avg_pool2d", lists, AVG_POOL2D_POSITIONS)
    for name, value in (("ceil_mode", ceil_mode), ("count_include_pad", count_include_pad)):
        if not isinstance(value, bool):
            raise must_be(name, "bool", value)
    if divisor_override is not None and not _is_int(divisor_override):
        raise must_be("divisor_override", "int", divisor_override)
    lengths = {"kernel_size": ((1, 2), "must either be a single int, or a tuple of two ints"),
               "stride": ((0, 1, 2), "must either be omitted, a single int, or a tuple of two ints"),
               "padding": ((1, 2), "must either be a single int, or a tuple of two ints")}
    pairs = {}
    for name, value in lists.items():
        values = _ints(value)
        allowed, words = lengths[name]
        if len(values) not in allowed:
            raise RuntimeError(f"avg_pool2d: {name} {words}")
        pairs[name] = values * 2 if len(values) == 1 else values
    if not pairs["stride"]:
        pairs["stride"] = pairs["kernel_size"]
    divisor = None if divisor_override is None else operator.index(divisor_override)
    return pairs["kernel_size"], pairs["stride"], pairs["padding"], divisor


def adaptive_pool2d_arguments(input, output_size, op="adaptive_avg_pool2d"):
    """Checks F.adaptive_avg_pool2d's (or, with op="adaptive_max_pool2d",
    F.adaptive_max_pool2d's) arguments as torch does, in torch's order and
    words, which differ between the two (None in output_size takes the
    input's size there, as torch.nn.functional does before its parser sees
    it); returns the output size as a list of two ints."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{op}(): argument 'input' (position 1) must be Tensor, not "
                        f"{_type_name(input)}")
    if type(output_size) is int:
        values = [output_size, output_size]
    else:
        values = _output_size_list(input, output_size, op)
    if op == "adaptive_avg_pool2d":
        # The average pool checks its output size before its input.
        _check_adaptive_output_size(op, values)
        _check_adaptive_input(op, input, "Expected 3D or 4D tensor, but got")
    else:
        _check_adaptive_input(op, input, "Expected 3D or 4D tensor, but got:")
        if len(values) != 2:
            raise RuntimeError(f"{op}(): internal error: output_size.size() must be 2")
        negative = [v for v in values if v < 0]
        if negative:
            # torch's max pool finds a negative size only when it makes its output.
            raise RuntimeError(f"Trying to create tensor with negative dimension {negative[0]}: "
                               f"{list(input.shape[:-2]) + values}")
    return values


def _output_size_list(input, output_size, op):
    from torch.nn.modules.utils import _list_with_default
    output_size = _list_with_default(output_size, input.size())
    failure = _int_list_failure(output_size)
    if failure is not None:
        position, type_name = failure
        if position is None:
            raise TypeError(f"{op}(): argument 'output_size' (position 2) must be tuple of ints, "
                            f"not {type_name}")
        if position == 0:
            raise TypeError(f"{op}(): argument 'output_size' (position 2) must be tuple of ints, "
                            f"but found element of type {type_name} at pos 0")
        raise _unpack_error(op, "output_size", position, type_name)
    values = _ints(output_size)
    if len(values) == 1 and not isinstance(output_size, (tuple, list, torch.Size)):
        values = values * 2
    return values


def _check_adaptive_output_size(op, values):
    if len(values) != 2:
        raise RuntimeError(f"{op}: output_size must be 2")
    if values[0] < 0 or values[1] < 0:
        raise RuntimeError(f"{op}: elements of output_size must be greater than or equal to 0 but received "
                           f"{{{values[0]}, {values[1]}}}")


def _check_adaptive_input(op, input, rank_words):
    if input.dim() not in (3, 4):
        raise RuntimeError(f"{op}(): {rank_words} {list(input.shape)}")
    sizes = _traced_sizes(input)
    # torch's max pool needs every dimension but the batch's (an unbatched
    # input's channels count as its batch); its average pool only the plane's
    # (its check skips the width, giving NaN where a window holds nothing:
    # ours rejects a zero width as well).
    first = input.dim() - 2 if op == "adaptive_avg_pool2d" else 1
    for d in range(first, input.dim()):
        if sizes[d] == 0:
            raise RuntimeError(f"{op}(): Expected input to have non-zero size for non-batch dimensions, but input "
                               f"has sizes {list(input.shape)} with dimension {d} being empty")


def _traced_sizes(t):
    """t's sizes as ints, also while torch.jit.trace records, which gives
    them as tensors: an op's int list does not take those, and neither the
    checks of the arguments nor a transposed convolution's output size (a
    constant of the trace, as in torch's own) belong in the graph, so the
    conversion is not warned about."""
    if not torch.jit.is_tracing():
        return list(t.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return [int(s) for s in t.shape]

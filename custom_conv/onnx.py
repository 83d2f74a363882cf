"""ONNX export: our ops become ONNX's standard Conv, ConvTranspose, MaxPool,
AveragePool and GlobalAveragePool, so an exported model runs in any ONNX
runtime.

    custom_conv.onnx.export(model, (x,), "model.onnx")            # torch's dynamo exporter
    custom_conv.onnx.export(model, (x,), "model.onnx", dynamo=False)  # the TorchScript one

export() is torch.onnx.export with our translations filled in. With
torch.onnx.export itself: for dynamo=True pass
custom_translation_table=custom_conv.onnx.TRANSLATION_TABLE; the TorchScript
exporter (dynamo=False) finds our symbolics, registered on import of
custom_conv. The one conversion of substance is max-pooling's indices:
ONNX counts them over the whole tensor, torch (and we) within each plane, so
the exported graph takes them modulo H * W. conv2d_backward_input, which is
what a transposed convolution runs (custom_conv/functional.py), becomes
ConvTranspose, its output_padding the difference between the size asked for
and the smallest one (from the weight's size and that size, both constants
of the graph: the size a transposed convolution gives is fixed at export).
A 1-D convolution exports as a Conv or ConvTranspose of height 1.
Average pooling exports as AveragePool, but not with a divisor_override,
which ONNX has no attribute for; adaptive average pooling as
GlobalAveragePool for a 1x1 output, or as AveragePool where the output size
divides the input's (then every window is the same), and not otherwise
(its windows differ in size, which AveragePool cannot express). Adaptive
max pooling likewise, as a MaxPool whose window is the whole plane (for a
1x1 output; GlobalMaxPool gives no indices) or where the sizes divide, its
indices per plane as max-pooling's.
"""
import torch

__all__ = ["export", "TRANSLATION_TABLE", "OPSET"]

OPSET = 18  # the opset of both exporters' Conv and MaxPool here (MaxPool's ceil_mode and dilations since 10)


def _pads(padding):
    """ONNX's pads: (top, left, bottom, right); ours are symmetric."""
    return [padding[0], padding[1], padding[0], padding[1]]


# ------------------------------------------------------------ dynamo (onnxscript)


def _conv2d_forward_onnxscript(input, weight, bias, stride, padding, dilation, groups):
    from onnxscript import opset18 as op
    attributes = dict(strides=list(stride), pads=_pads(padding), dilations=list(dilation), group=groups)
    inputs = (input, weight) if bias is None else (input, weight, bias)
    return op.Conv(*inputs, **attributes)


def _transposed_output_padding(weight_size, input_size, stride, padding, dilation):
    """The output_padding of ONNX's ConvTranspose that gives `input_size`:
    its excess over the smallest size whose convolution has grad_output's
    size, which is the convolution's output size of `input_size` (the op
    takes no other), so that only the weight's size needs to be known."""
    padding_of = []
    for size, k, s, p, d in zip(input_size[2:], weight_size[2:], stride, padding, dilation):
        n = (int(size) + 2 * p - d * (k - 1) - 1) // s + 1
        padding_of.append(int(size) - ((n - 1) * s - 2 * p + d * (k - 1) + 1))
    return padding_of


def _conv2d_backward_input_onnxscript(grad_output, weight, input_size, stride, padding, dilation, groups):
    from onnxscript import opset18 as op
    weight_size = [int(d) for d in weight.shape]
    return op.ConvTranspose(grad_output, weight, strides=list(stride), pads=_pads(padding),
                            dilations=list(dilation), group=groups,
                            output_padding=_transposed_output_padding(weight_size, input_size, stride, padding,
                                                                      dilation))


def _max_pool2d_forward_onnxscript(input, kernel_size, stride, padding, dilation, ceil_mode):
    from onnxscript import opset18 as op
    output, indices = op.MaxPool(input, kernel_shape=list(kernel_size), strides=list(stride), pads=_pads(padding),
                                 dilations=list(dilation), ceil_mode=int(ceil_mode))
    plane = op.ReduceProd(op.Shape(input, start=2), keepdims=1)  # H * W
    return output, op.Mod(indices, plane)


def _no_divisor_override(divisor_override):
    if divisor_override is not None:
        raise RuntimeError("custom_conv.onnx: avg_pool2d with a divisor_override has no ONNX equivalent "
                           "(AveragePool always divides by the window's size)")


def _adaptive_window(input_size, output_size, op="adaptive_avg_pool2d", pool="AveragePool"):
    """'global', or the kernel (= stride) of AveragePool (MaxPool) that
    gives adaptive pooling's windows: only where each output size divides
    the input's."""
    in_hw = [int(s) for s in input_size[2:]]
    if list(output_size) == [1, 1]:
        return "global"
    if any(o == 0 or i % o for i, o in zip(in_hw, output_size)):
        raise RuntimeError(f"custom_conv.onnx: {op} from {in_hw} to {list(output_size)} has "
                           f"windows of different sizes, which ONNX's {pool} cannot express (exportable: "
                           f"a 1x1 output, or output sizes that divide the input's)")
    return [i // o for i, o in zip(in_hw, output_size)]


def _adaptive_max_window(input_size, output_size):
    """MaxPool's kernel (= stride) for adaptive max pooling: the whole
    plane for a 1x1 output."""
    window = _adaptive_window(input_size, output_size, "adaptive_max_pool2d", "MaxPool")
    return [int(s) for s in input_size[2:]] if window == "global" else window


def _avg_pool2d_forward_onnxscript(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                   divisor_override=None):
    from onnxscript import opset18 as op
    _no_divisor_override(divisor_override)
    return op.AveragePool(input, kernel_shape=list(kernel_size), strides=list(stride), pads=_pads(padding),
                          ceil_mode=int(ceil_mode), count_include_pad=int(count_include_pad))


def _adaptive_avg_pool2d_forward_onnxscript(input, output_size):
    from onnxscript import opset18 as op
    window = _adaptive_window(input.shape, output_size)
    if window == "global":
        return op.GlobalAveragePool(input)
    return op.AveragePool(input, kernel_shape=window, strides=window)


def _adaptive_max_pool2d_forward_onnxscript(input, output_size):
    window = _adaptive_max_window(input.shape, output_size)
    return _max_pool2d_forward_onnxscript(input, window, window, [0, 0], [1, 1], False)


def translation_table():
    """What torch.onnx.export(..., dynamo=True) takes as custom_translation_table."""
    ops = torch.ops.custom_conv
    return {ops.conv2d_forward.default: _conv2d_forward_onnxscript,
            ops.conv2d_backward_input.default: _conv2d_backward_input_onnxscript,
            ops.max_pool2d_forward.default: _max_pool2d_forward_onnxscript,
            ops.avg_pool2d_forward.default: _avg_pool2d_forward_onnxscript,
            ops.adaptive_avg_pool2d_forward.default: _adaptive_avg_pool2d_forward_onnxscript,
            ops.adaptive_max_pool2d_forward.default: _adaptive_max_pool2d_forward_onnxscript}


TRANSLATION_TABLE = translation_table()


# ------------------------------------------------------------ TorchScript (symbolics)


def _conv2d_forward_symbolic(g, input, weight, bias, stride, padding, dilation, groups):
    from torch.onnx import symbolic_helper as sh
    stride, padding, dilation = (sh._get_const(v, "is", name) for v, name in
                                 ((stride, "stride"), (padding, "padding"), (dilation, "dilation")))
    inputs = (input, weight) if sh._is_none(bias) else (input, weight, bias)
    return g.op("Conv", *inputs, strides_i=stride, pads_i=_pads(padding), dilations_i=dilation,
                group_i=sh._get_const(groups, "i", "groups"))


def _conv2d_backward_input_symbolic(g, grad_output, weight, input_size, stride, padding, dilation, groups):
    from torch.onnx import symbolic_helper as sh
    stride, padding, dilation, input_size = (sh._get_const(v, "is", name) for v, name in
                                             ((stride, "stride"), (padding, "padding"), (dilation, "dilation"),
                                              (input_size, "input_size")))
    output_padding = _transposed_output_padding(sh._get_tensor_sizes(weight), input_size, stride, padding, dilation)
    return g.op("ConvTranspose", grad_output, weight, strides_i=stride, pads_i=_pads(padding), dilations_i=dilation,
                group_i=sh._get_const(groups, "i", "groups"), output_padding_i=output_padding)


def _max_pool2d_forward_symbolic(g, input, kernel_size, stride, padding, dilation, ceil_mode):
    from torch.onnx import symbolic_helper as sh
    kernel_size, stride, padding, dilation = (sh._get_const(v, "is", name) for v, name in
                                              ((kernel_size, "kernel_size"), (stride, "stride"),
                                               (padding, "padding"), (dilation, "dilation")))
    return _max_pool_with_plane_indices(g, input, kernel_size, stride, padding, dilation,
                                        int(sh._get_const(ceil_mode, "b", "ceil_mode")))


def _max_pool_with_plane_indices(g, input, kernel_size, stride, padding, dilation, ceil_mode):
    output, indices = g.op("MaxPool", input, kernel_shape_i=kernel_size, strides_i=stride, pads_i=_pads(padding),
                           dilations_i=dilation, ceil_mode_i=ceil_mode, outputs=2)
    shape = g.op("Shape", input)
    plane = g.op("ReduceProd", g.op("Slice", shape, g.op("Constant", value_t=torch.tensor([2])),
                                    g.op("Constant", value_t=torch.tensor([4]))), keepdims_i=1)
    return output, g.op("Mod", indices, plane)


def _avg_pool2d_forward_symbolic(g, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                 divisor_override):
    from torch.onnx import symbolic_helper as sh
    _no_divisor_override(None if sh._is_none(divisor_override) else sh._get_const(divisor_override, "i", "divisor"))
    kernel_size, stride, padding = (sh._get_const(v, "is", name) for v, name in
                                    ((kernel_size, "kernel_size"), (stride, "stride"), (padding, "padding")))
    return g.op("AveragePool", input, kernel_shape_i=kernel_size, strides_i=stride, pads_i=_pads(padding),
                ceil_mode_i=int(sh._get_const(ceil_mode, "b", "ceil_mode")),
                count_include_pad_i=int(sh._get_const(count_include_pad, "b", "count_include_pad")))


def _adaptive_avg_pool2d_forward_symbolic(g, input, output_size):
    from torch.onnx import symbolic_helper as sh
    window = _adaptive_window(sh._get_tensor_sizes(input), sh._get_const(output_size, "is", "output_size"))
    if window == "global":
        return g.op("GlobalAveragePool", input)
    return g.op("AveragePool", input, kernel_shape_i=window, strides_i=window)


def _adaptive_max_pool2d_forward_symbolic(g, input, output_size):
    from torch.onnx import symbolic_helper as sh
    window = _adaptive_max_window(sh._get_tensor_sizes(input), sh._get_const(output_size, "is", "output_size"))
    return _max_pool_with_plane_indices(g, input, window, window, [0, 0], [1, 1], 0)


def register_symbolics():
    """Lets the TorchScript exporter (torch.onnx.export(..., dynamo=False)) translate our ops."""
    torch.onnx.register_custom_op_symbolic("custom_conv::conv2d_forward", _conv2d_forward_symbolic, OPSET)
    torch.onnx.register_custom_op_symbolic("custom_conv::conv2d_backward_input", _conv2d_backward_input_symbolic,
                                           OPSET)
    torch.onnx.register_custom_op_symbolic("custom_conv::max_pool2d_forward", _max_pool2d_forward_symbolic, OPSET)
    torch.onnx.register_custom_op_symbolic("custom_conv::avg_pool2d_forward", _avg_pool2d_forward_symbolic, OPSET)
    torch.onnx.register_custom_op_symbolic("custom_conv::adaptive_avg_pool2d_forward",
                                           _adaptive_avg_pool2d_forward_symbolic, OPSET)
    torch.onnx.register_custom_op_symbolic("custom_conv::adaptive_max_pool2d_forward",
                                           _adaptive_max_pool2d_forward_symbolic, OPSET)


def export(model, args, f=None, *, dynamo=True, **kwargs):
    """torch.onnx.export, with our ops translated to ONNX's Conv,
    ConvTranspose, MaxPool, AveragePool and GlobalAveragePool by either
    exporter; returns what it returns."""
    if dynamo:
        table = {**TRANSLATION_TABLE, **kwargs.pop("custom_translation_table", {})}
        return torch.onnx.export(model, args, f, dynamo=True, custom_translation_table=table,
                                 opset_version=kwargs.pop("opset_version", OPSET), **kwargs)
    return torch.onnx.export(model, args, f, dynamo=False, opset_version=kwargs.pop("opset_version", OPSET),
                             **kwargs)

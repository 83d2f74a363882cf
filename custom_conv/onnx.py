"""ONNX export: our ops become ONNX's standard Conv and MaxPool, so an
exported model runs in any ONNX runtime.

    custom_conv.onnx.export(model, (x,), "model.onnx")            # torch's dynamo exporter
    custom_conv.onnx.export(model, (x,), "model.onnx", dynamo=False)  # the TorchScript one

export() is torch.onnx.export with our translations filled in. With
torch.onnx.export itself: for dynamo=True pass
custom_translation_table=custom_conv.onnx.TRANSLATION_TABLE; the TorchScript
exporter (dynamo=False) finds our symbolics, registered on import of
custom_conv. The one conversion of substance is max-pooling's indices:
ONNX counts them over the whole tensor, torch (and we) within each plane, so
the exported graph takes them modulo H * W.
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


def _max_pool2d_forward_onnxscript(input, kernel_size, stride, padding, dilation, ceil_mode):
    from onnxscript import opset18 as op
    output, indices = op.MaxPool(input, kernel_shape=list(kernel_size), strides=list(stride), pads=_pads(padding),
                                 dilations=list(dilation), ceil_mode=int(ceil_mode))
    plane = op.ReduceProd(op.Shape(input, start=2), keepdims=1)  # H * W
    return output, op.Mod(indices, plane)


def translation_table():
    """What torch.onnx.export(..., dynamo=True) takes as custom_translation_table."""
    ops = torch.ops.custom_conv
    return {ops.conv2d_forward.default: _conv2d_forward_onnxscript,
            ops.max_pool2d_forward.default: _max_pool2d_forward_onnxscript}


TRANSLATION_TABLE = translation_table()


# ------------------------------------------------------------ TorchScript (symbolics)


def _conv2d_forward_symbolic(g, input, weight, bias, stride, padding, dilation, groups):
    from torch.onnx import symbolic_helper as sh
    stride, padding, dilation = (sh._get_const(v, "is", name) for v, name in
                                 ((stride, "stride"), (padding, "padding"), (dilation, "dilation")))
    inputs = (input, weight) if sh._is_none(bias) else (input, weight, bias)
    return g.op("Conv", *inputs, strides_i=stride, pads_i=_pads(padding), dilations_i=dilation,
                group_i=sh._get_const(groups, "i", "groups"))


def _max_pool2d_forward_symbolic(g, input, kernel_size, stride, padding, dilation, ceil_mode):
    from torch.onnx import symbolic_helper as sh
    kernel_size, stride, padding, dilation = (sh._get_const(v, "is", name) for v, name in
                                              ((kernel_size, "kernel_size"), (stride, "stride"),
                                               (padding, "padding"), (dilation, "dilation")))
    output, indices = g.op("MaxPool", input, kernel_shape_i=kernel_size, strides_i=stride, pads_i=_pads(padding),
                           dilations_i=dilation, ceil_mode_i=int(sh._get_const(ceil_mode, "b", "ceil_mode")),
                           outputs=2)
    shape = g.op("Shape", input)
    plane = g.op("ReduceProd", g.op("Slice", shape, g.op("Constant", value_t=torch.tensor([2])),
                                    g.op("Constant", value_t=torch.tensor([4]))), keepdims_i=1)
    return output, g.op("Mod", indices, plane)


def register_symbolics():
    """Lets the TorchScript exporter (torch.onnx.export(..., dynamo=False)) translate our ops."""
    torch.onnx.register_custom_op_symbolic("custom_conv::conv2d_forward", _conv2d_forward_symbolic, OPSET)
    torch.onnx.register_custom_op_symbolic("custom_conv::max_pool2d_forward", _max_pool2d_forward_symbolic, OPSET)


def export(model, args, f=None, *, dynamo=True, **kwargs):
    """torch.onnx.export, with our ops translated to ONNX's Conv and MaxPool
    by either exporter; returns what it returns."""
    if dynamo:
        table = {**TRANSLATION_TABLE, **kwargs.pop("custom_translation_table", {})}
        return torch.onnx.export(model, args, f, dynamo=True, custom_translation_table=table,
                                 opset_version=kwargs.pop("opset_version", OPSET), **kwargs)
    return torch.onnx.export(model, args, f, dynamo=False, opset_version=kwargs.pop("opset_version", OPSET),
                             **kwargs)

"""ORT-format model files (``.ort`` flatbuffers) back to ONNX, so ONNX Runtime can optimise them.

Some models ship only as ORT-format files (Moonshine's, in ``moonshine-cpp``'s wheel). An
``.ort`` file is a graph already optimised when it was written and ONNX Runtime runs it as
is: no constant folding at load. Moonshine's merged decoder stores its weights compressed
and decompresses them in the graph (``Cast``/``Mul``/``Add`` over the 32,768 x 416 token
embedding, inside the ``If`` of its cache branch) at EVERY decoder step: measured here,
about 45 of a step's 55 ms (ORT's profiler). The same graph converted to ONNX and loaded
with ``ORT_ENABLE_ALL`` folds those nodes once at load: a greedy decode of 12 espeak-ng
sentences one at a time took 2.3 s instead of 9.7 s, the same tokens.

:func:`ort_to_onnx` rebuilds the ONNX ``ModelProto`` from the flatbuffer with ONNX Runtime's
own generated readers (``onnxruntime.tools.ort_format_model``): nodes in their index order,
attributes (subgraphs included), initializers, the graph inputs' and outputs' types and
shapes, opsets and IR version. It refuses what it does not rebuild (fused nodes, sparse
initializers, external data) rather than produce a different graph.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import onnx
from onnx import AttributeProto, TensorProto, helper

from serve_app.recognizers.bare_package import bare_package


def _tools_without_torch() -> None:
    """``onnxruntime.tools``' ``__init__`` imports torch whenever it is installed, only to
    re-export ``infer_input_info``: 1-2 CPU-s and ~190 MB in every Moonshine replica, which
    runs no torch. The package is installed without running it (its submodules import as
    usual); ``infer_input_info`` is still there, imported when first asked for."""
    if "onnxruntime.tools" in sys.modules:
        return
    package = bare_package("onnxruntime.tools", {"infer_input_info": _infer_input_info})
    if package is None:
        return  # the imports below say what is missing
    sys.modules["onnxruntime.tools"] = package
    sys.modules["onnxruntime"].tools = package  # type: ignore[attr-defined]


def _infer_input_info() -> Any:
    from onnxruntime.tools.pytorch_export_helpers import infer_input_info

    return infer_input_info


_tools_without_torch()

from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs  # noqa: E402
from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.AttributeType import (  # noqa: E402
    AttributeType,
)
from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.DimensionValueType import (  # noqa: E402
    DimensionValueType,
)
from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.NodeType import NodeType  # noqa: E402
from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.TypeInfoValue import (  # noqa: E402
    TypeInfoValue,
)


class OrtFormatError(ValueError):
    """The ``.ort`` file holds something this converter does not rebuild faithfully."""


def _str(raw: bytes | None) -> str:
    return raw.decode("utf-8") if raw is not None else ""


def _tensor(fb: Any) -> TensorProto:
    proto = TensorProto()
    proto.name = _str(fb.Name())
    proto.dims.extend(fb.Dims(i) for i in range(fb.DimsLength()))
    proto.data_type = fb.DataType()
    if fb.StringDataLength():
        proto.string_data.extend(fb.StringData(i) for i in range(fb.StringDataLength()))
    elif fb.RawDataLength():
        proto.raw_data = fb.RawDataAsNumpy().tobytes()
    elif fb.ExternalDataOffset() >= 0:
        raise OrtFormatError(f"tensor {proto.name!r} keeps its data outside the file")
    return proto


def _value_info(fb: Any) -> onnx.ValueInfoProto:
    name = _str(fb.Name())
    type_info = fb.Type()
    if type_info is None:
        return helper.make_empty_tensor_value_info(name)
    if type_info.ValueType() != TypeInfoValue.tensor_type:
        raise OrtFormatError(f"value {name!r} is not a tensor")
    tensor_type = _tensor_type(type_info)
    shape = tensor_type.Shape()
    dims: list[int | str | None] | None = None
    if shape is not None:
        dims = []
        for i in range(shape.DimLength()):
            value = shape.Dim(i).Value()
            if value is None or value.DimType() == DimensionValueType.UNKNOWN:
                dims.append(None)
            elif value.DimType() == DimensionValueType.VALUE:
                dims.append(value.DimValue())
            else:
                dims.append(_str(value.DimParam()))
    return helper.make_tensor_value_info(name, tensor_type.ElemType(), dims)


def _tensor_type(type_info: Any) -> Any:
    table = type_info.Value()
    tensor_type = fbs.TensorTypeAndShape.TensorTypeAndShape()
    tensor_type.Init(table.Bytes, table.Pos)
    return tensor_type


def _attribute(fb: Any) -> AttributeProto:
    proto = AttributeProto()
    proto.name = _str(fb.Name())
    kind = proto.type = fb.Type()
    if kind == AttributeType.FLOAT:
        proto.f = fb.F()
    elif kind == AttributeType.INT:
        proto.i = fb.I()
    elif kind == AttributeType.STRING:
        proto.s = fb.S()
    elif kind == AttributeType.TENSOR:
        proto.t.CopyFrom(_tensor(fb.T()))
    elif kind == AttributeType.GRAPH:
        proto.g.CopyFrom(_graph(fb.G()))
    elif kind == AttributeType.FLOATS:
        proto.floats.extend(fb.Floats(i) for i in range(fb.FloatsLength()))
    elif kind == AttributeType.INTS:
        proto.ints.extend(fb.Ints(i) for i in range(fb.IntsLength()))
    elif kind == AttributeType.STRINGS:
        proto.strings.extend(fb.Strings(i) for i in range(fb.StringsLength()))
    elif kind == AttributeType.TENSORS:
        proto.tensors.extend(_tensor(fb.Tensors(i)) for i in range(fb.TensorsLength()))
    elif kind == AttributeType.GRAPHS:
        proto.graphs.extend(_graph(fb.Graphs(i)) for i in range(fb.GraphsLength()))
    else:
        raise OrtFormatError(f"attribute {proto.name!r} has type {kind}")
    return proto


def _graph(fb: Any) -> onnx.GraphProto:
    if fb.SparseInitializersLength():
        raise OrtFormatError("sparse initializers are not rebuilt")
    nodes = []
    for i in range(fb.NodesLength()):
        node = fb.Nodes(i)
        if node.Type() != NodeType.Primitive:
            raise OrtFormatError(f"node {_str(node.Name())!r} is a fused node")
        proto = helper.make_node(
            _str(node.OpType()),
            [_str(node.Inputs(j)) for j in range(node.InputsLength())],
            [_str(node.Outputs(j)) for j in range(node.OutputsLength())],
            name=_str(node.Name()),
            domain=_str(node.Domain()),
        )
        attributes = (node.Attributes(j) for j in range(node.AttributesLength()))
        proto.attribute.extend(_attribute(a) for a in attributes)
        nodes.append((node.Index(), proto))
    nodes.sort(key=lambda pair: pair[0])  # ORT writes nodes in topological index order
    args = {_str(fb.NodeArgs(i).Name()): fb.NodeArgs(i) for i in range(fb.NodeArgsLength())}
    return helper.make_graph(
        [proto for _, proto in nodes],
        "graph",
        [_value_info(args[_str(fb.Inputs(i))]) for i in range(fb.InputsLength())],
        [_value_info(args[_str(fb.Outputs(i))]) for i in range(fb.OutputsLength())],
        initializer=[_tensor(fb.Initializers(i)) for i in range(fb.InitializersLength())],
    )


def ort_to_onnx(path: Path) -> onnx.ModelProto:
    """The ONNX model an ``.ort`` file holds (same nodes, weights, inputs and outputs)."""
    buffer = Path(path).read_bytes()
    session = fbs.InferenceSession.InferenceSession.GetRootAsInferenceSession(buffer, 0)
    model = session.Model()
    if model is None:
        raise OrtFormatError(f"{path} holds no model")
    opsets = [
        helper.make_opsetid(_str(model.OpsetImport(i).Domain()), model.OpsetImport(i).Version())
        for i in range(model.OpsetImportLength())
    ]
    proto = helper.make_model(_graph(model.Graph()), opset_imports=opsets)
    proto.ir_version = model.IrVersion()
    proto.producer_name = f"{_str(model.ProducerName())} (from {Path(path).name})"
    return proto

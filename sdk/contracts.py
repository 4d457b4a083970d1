"""The contracts of the models this project trains itself (the spam filter, the digits classifier), and the
check a provider runs before publishing any model: does the card's contract describe the ONNX graph?"""

from __future__ import annotations

from typing import Any

import onnx

from wire.contract import SPAM_CONTRACT as SPAM_CONTRACT  # re-exported: defined in wire, tuned models use it too
from wire.contract import SPAM_TASK as SPAM_TASK
from wire.contract import Contract, ContractMismatch, TensorInfo, check_graph

DIGIT_SIDE = 8  # scikit-learn's digits are 8 x 8, values 0..16 (16 = ink); the model reads them / 16
DIGITS_TASK = "image-classification"
DIGITS_CONTRACT: dict[str, Any] = {
    "id_column": "file",
    "inputs": [{"tensor": "pixels", "column": "image", "dtype": "float32", "shape": [None, DIGIT_SIDE * DIGIT_SIDE],
                # Dark ink on white paper (255) -> the model's 0 (paper) .. 1 (ink): 1 - p / 255.
                "preprocess": {"kind": "image", "mode": "L", "width": DIGIT_SIDE, "height": DIGIT_SIDE,
                               "resample": "box", "scale": -1 / 255, "offset": 1.0, "layout": "flat",
                               "max_bytes": 1 << 20, "max_pixels": 1 << 22, "formats": ["png", "jpeg"]}}],
    "outputs": [{"tensor": "label", "column": "class", "kind": "class"},
                {"tensor": "probabilities", "column": "probabilities", "kind": "probabilities"}],
    "classes": [str(d) for d in range(10)],
}

_ONNX_DTYPES: dict[int, str] = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64",
                onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32", onnx.TensorProto.STRING: "string"}


def graph_tensors(model: onnx.ModelProto) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The graph's declared inputs (less initializers) and outputs, in the contract's terms."""
    initializers = {t.name for t in model.graph.initializer}
    return ([_info(v) for v in model.graph.input if v.name not in initializers],
            [_info(v) for v in model.graph.output])


def contract_mismatch(model: onnx.ModelProto, contract: Contract) -> str | None:
    """What differs between the contract and the graph (None when it describes the graph)."""
    inputs, outputs = graph_tensors(model)
    try:
        check_graph(contract, inputs, outputs)
    except ContractMismatch as exc:
        return str(exc)
    return None


def _info(value: onnx.ValueInfoProto) -> TensorInfo:
    tensor = value.type.tensor_type
    dtype = _ONNX_DTYPES.get(int(tensor.elem_type), onnx.TensorProto.DataType.Name(tensor.elem_type).lower())
    dims: list[int | str | None] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                    for d in tensor.shape.dim]
    return TensorInfo(value.name, dtype, tuple(dims))

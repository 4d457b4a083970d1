"""Well-formed ONNX models that are too slow or too large for a platform's limits, with a numbers contract."""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from wire.contract import Contract

FEATURES = 4
CONTRACT_DOC: dict[str, Any] = {
    "id_column": "id",
    "inputs": [{"tensor": "x", "columns": [f"f{k}" for k in range(FEATURES)], "dtype": "float32",
                "shape": [None, FEATURES], "preprocess": {"kind": "numbers"}}],
    "outputs": [{"tensor": "y", "column": "value", "kind": "value"}],
    "classes": None,
}
CONTRACT = Contract.parse(CONTRACT_DOC)


def _model(nodes: list[Any], last: str, weights: list[Any]) -> bytes:
    nodes.append(helper.make_node("ReduceSum", [last], ["y"], keepdims=1))
    graph = helper.make_graph(nodes, "heavy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, FEATURES])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])], weights)
    # IR 8 / opset 13: what the installed onnxruntime reads (ReduceSum's axes default to all but keepdims).
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return bytes(model.SerializeToString())


def slow_model(width: int = 1024, depth: int = 400) -> bytes:
    """`depth` square MatMuls of `width`: about 2 * 64 * width^2 * depth flops per 64-row chunk."""
    rng = np.random.default_rng(7)
    weights = [numpy_helper.from_array((rng.random((FEATURES, width)) / FEATURES).astype(np.float32), "w_in"),
               numpy_helper.from_array((rng.random((width, width)) / width).astype(np.float32), "w")]
    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["h0"])]
    nodes += [helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]) for i in range(depth)]
    return _model(nodes, f"h{depth}", weights)


def hungry_model(width: int = 1 << 16, depth: int = 24) -> bytes:
    """`depth` tensors of 64 x `width` float32 (16 MiB each at the default), all alive until a final Sum."""
    weights = [numpy_helper.from_array(np.full((FEATURES, width), 0.25, np.float32), "w_in")]
    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["h0"])]
    nodes += [helper.make_node("Mul", [f"h{i}", "h0"], [f"h{i + 1}"]) for i in range(depth)]
    nodes.append(helper.make_node("Sum", [f"h{i}" for i in range(depth + 1)], ["total"]))
    return _model(nodes, "total", weights)


def columns(rows: int) -> dict[str, list[object]]:
    """`rows` rows of the contract's numeric columns."""
    return {f"f{k}": [float(i % 7) / 7 for i in range(rows)] for k in range(FEATURES)}

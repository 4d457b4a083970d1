"""A model's contract: which of the owner's columns feed which ONNX tensor, and which tensors become results.

Part of the signed model card (`wire.card`, `"contract"`). Shape::

    {"id_column": "message_id",                       # the owner's row id, copied to the results
     "inputs":  [{"tensor": "text", "column": "text", "dtype": "string", "shape": [null, 1],
                  "preprocess": {"kind": "email-text"}}],
     "outputs": [{"tensor": "probabilities", "column": "spam_probability", "kind": "probability", "class_index": 1},
                 {"tensor": "label", "column": "label", "kind": "label", "dtype": "int8"}],
     "classes": ["ham", "spam"] | null}               # names of the label values 0..C-1

Preprocessing is a small fixed vocabulary the enclave implements (`enclave.preprocess`), never code:

- ``email-text``: a string column (the owner's `sdk.emails.email_text`) -> string tensor [N, 1];
- ``image``: a binary column of PNG/JPEG bytes -> decoded, converted to ``mode`` ("L" or "RGB"), resized to
  ``width`` x ``height`` with ``resample``, scaled ``pixel * scale + offset`` -> float32 tensor in ``layout``
  ("nchw" [N, C, H, W], "nhwc" [N, H, W, C] or "flat" [N, H*W*C]); ``max_bytes`` and ``max_pixels`` bound
  each file (refused per file before upload, and again in the enclave);
- ``numbers``: numeric columns (``columns``, in order) -> float32 or float64 tensor [N, len(columns)].

Output kinds: ``probability`` (float [N, C] -> one float32 column, class ``class_index``), ``probabilities``
(float [N, C] -> a list<float32> column of C values), ``label`` (int [N] -> an integer column of ``dtype``),
``class`` (int [N] -> a string column, ``classes[value]``), ``value`` (float [N] or [N, 1] -> float32).
The card's ``output.probability_digits`` rounds every float result.

`check_graph` compares a contract with a graph's declared inputs and outputs; the provider runs it at
publish time (on the ONNX graph) and the enclave at load time (on the onnxruntime session).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from wire.errors import FormatError, refuse_unknown, require

TASKS = ("text-classification", "image-classification", "tabular-classification", "regression")
INPUT_DTYPES = ("string", "float32", "float64")
LABEL_DTYPES = ("int8", "int16", "int32", "int64")
FLOAT_TENSORS = ("float32", "float64")
INT_TENSORS = ("int64", "int32")
RESAMPLE = ("nearest", "box", "bilinear", "bicubic", "lanczos")
LAYOUTS = ("nchw", "nhwc", "flat")
MODES = {"L": 1, "RGB": 3}
IMAGE_FORMATS = ("png", "jpeg")
MAX_SIDE = 1024  # model input side, pixels: a 64-row chunk of 1024 x 1024 RGB float32 is 805 MB
MAX_IMAGE_BYTES = 64 << 20
RESERVED_COLUMNS = ("model_digest",)  # added by the enclave to every result table
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}")
_COLUMN = re.compile(r"[a-z][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class ImagePrep:
    """The ``image`` preprocessing's parameters (see the module docstring)."""

    mode: str
    width: int
    height: int
    resample: str
    scale: float
    offset: float
    layout: str
    max_bytes: int
    max_pixels: int
    formats: tuple[str, ...]

    @property
    def channels(self) -> int:
        return MODES[self.mode]

    def shape(self) -> list[int | None]:
        """The tensor shape this preprocessing yields (batch dimension None)."""
        c, h, w = self.channels, self.height, self.width
        return {"nchw": [None, c, h, w], "nhwc": [None, h, w, c], "flat": [None, c * h * w]}[self.layout]


@dataclass(frozen=True)
class InputSpec:
    """One graph input: the owner's column(s) that feed it, and how."""

    tensor: str
    columns: tuple[str, ...]  # one for email-text and image; several for numbers
    dtype: str
    shape: tuple[int | None, ...]
    kind: str  # email-text | image | numbers
    image: ImagePrep | None = None


@dataclass(frozen=True)
class OutputSpec:
    """One graph output and the result column it becomes."""

    tensor: str
    column: str
    kind: str  # probability | probabilities | label | class | value
    class_index: int | None = None
    dtype: str | None = None  # label: the result column's integer type


@dataclass(frozen=True)
class Contract:
    """A parsed contract (see the module docstring)."""

    id_column: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    classes: tuple[str, ...] | None

    @property
    def input_columns(self) -> tuple[str, ...]:
        """The owner's columns the model reads, in input order (each once)."""
        return tuple(dict.fromkeys(c for i in self.inputs for c in i.columns))

    @property
    def result_columns(self) -> tuple[str, ...]:
        """The result table's columns an owner reads: the id, then each output's column."""
        return (self.id_column, *(o.column for o in self.outputs))

    @classmethod
    def parse(cls, doc: Any, where: str = "card.contract") -> Contract:
        """Strict parse; FormatError names the field (e.g. ``card.contract.inputs[0].preprocess.width``)."""
        if not isinstance(doc, dict):
            raise FormatError(where, "a JSON object", type(doc).__name__)
        refuse_unknown(doc, {"id_column", "inputs", "outputs", "classes"}, where=where)
        id_column = _column(require(doc, "id_column", str, where=where), f"{where}.id_column")
        classes = _classes(doc.get("classes"), f"{where}.classes")
        inputs = tuple(_input(d, f"{where}.inputs[{i}]") for i, d in
                       enumerate(_nonempty(require(doc, "inputs", list, where=where), f"{where}.inputs")))
        outputs = tuple(_output(d, f"{where}.outputs[{i}]", classes) for i, d in
                        enumerate(_nonempty(require(doc, "outputs", list, where=where), f"{where}.outputs")))
        _unique([i.tensor for i in inputs], f"{where}.inputs", "tensor")
        _unique([o.column for o in outputs], f"{where}.outputs", "column")  # a tensor may feed two columns
        taken = {id_column, *RESERVED_COLUMNS}
        for i, o in enumerate(outputs):
            if o.column in taken:
                raise FormatError(f"{where}.outputs[{i}].column", f"a name other than {sorted(taken)}", o.column)
        for i, spec in enumerate(inputs):
            if id_column in spec.columns:
                raise FormatError(f"{where}.inputs[{i}].column", f"a column other than the id {id_column!r}",
                                  id_column)
        return cls(id_column, inputs, outputs, classes)

    def to_json(self) -> dict[str, Any]:
        """The contract as the card carries it (parse(to_json()) == self)."""
        return {"id_column": self.id_column, "inputs": [_input_json(i) for i in self.inputs],
                "outputs": [_output_json(o) for o in self.outputs],
                "classes": list(self.classes) if self.classes is not None else None}


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output as declared: name, dtype (this module's names), shape (int, or None/str)."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]


class ContractMismatch(ValueError):
    """The contract does not describe the graph; the message names the tensor, expected and found."""


def check_graph(contract: Contract, inputs: list[TensorInfo], outputs: list[TensorInfo]) -> None:
    """Raise ContractMismatch naming the first difference between the contract and the graph's declarations.

    Every graph input must be fed by the contract and vice versa; each output the contract reads must exist
    with a dtype and rank its kind can use; a fixed graph dimension must equal the contract's.
    """
    graph_inputs = {t.name: t for t in inputs}
    fed = {i.tensor for i in contract.inputs}
    if set(graph_inputs) != fed:
        raise ContractMismatch(f"inputs: the contract feeds {sorted(fed)}, the graph takes {sorted(graph_inputs)}")
    for spec in contract.inputs:
        found = graph_inputs[spec.tensor]
        _same_dtype(f"input {spec.tensor!r}", spec.dtype, found)
        _same_shape(f"input {spec.tensor!r}", list(spec.shape), found)
    graph_outputs = {t.name: t for t in outputs}
    for out in contract.outputs:
        found_out = graph_outputs.get(out.tensor)
        if found_out is None:
            raise ContractMismatch(f"output {out.tensor!r} (-> column {out.column!r}): not among the graph's "
                                   f"outputs {sorted(graph_outputs)}")
        _check_output(contract, out, found_out)


def _check_output(contract: Contract, out: OutputSpec, found: TensorInfo) -> None:
    what = f"output {out.tensor!r} ({out.kind})"
    allowed = FLOAT_TENSORS if out.kind in ("probability", "probabilities", "value") else INT_TENSORS
    if found.dtype not in allowed:
        raise ContractMismatch(f"{what}: expected a tensor of {' or '.join(allowed)}, the graph declares "
                               f"{found.dtype}")
    rank = len(found.shape)
    ranks = {"probability": (2,), "probabilities": (2,), "label": (1,), "class": (1,), "value": (1, 2)}[out.kind]
    if rank not in ranks:
        raise ContractMismatch(f"{what}: expected rank {' or '.join(map(str, ranks))}, the graph declares shape "
                               f"{_shown(found.shape)}")
    width = found.shape[1] if rank == 2 else None
    if out.kind == "value" and rank == 2 and isinstance(width, int) and width != 1:
        raise ContractMismatch(f"{what}: expected shape [N, 1], the graph declares {_shown(found.shape)}")
    if out.kind in ("probability", "probabilities") and isinstance(width, int):
        if out.class_index is not None and out.class_index >= width:
            raise ContractMismatch(f"{what}: class_index {out.class_index} is outside the graph's {width} classes")
        if contract.classes is not None and len(contract.classes) != width:
            raise ContractMismatch(f"{what}: the contract names {len(contract.classes)} classes, the graph "
                                   f"declares {width}")


def _same_dtype(what: str, expected: str, found: TensorInfo) -> None:
    if found.dtype != expected:
        raise ContractMismatch(f"{what}: the contract says dtype {expected}, the graph declares {found.dtype}")


def _same_shape(what: str, expected: list[int | None], found: TensorInfo) -> None:
    if len(found.shape) != len(expected):
        raise ContractMismatch(f"{what}: the contract says shape {_shown(expected)}, the graph declares "
                               f"{_shown(found.shape)}")
    if isinstance(found.shape[0], int):
        raise ContractMismatch(f"{what}: expected a free batch dimension (the enclave runs fixed chunks of rows), "
                               f"the graph fixes it at {found.shape[0]}")
    for axis, (want, have) in enumerate(zip(expected[1:], found.shape[1:], strict=True), start=1):
        if isinstance(have, int) and have != want:
            raise ContractMismatch(f"{what}: dimension {axis} is {want} in the contract, {have} in the graph "
                                   f"(contract {_shown(expected)}, graph {_shown(found.shape)})")


def _shown(shape: Any) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


# -- parsing ------------------------------------------------------------------------------------------------


def _input(doc: Any, where: str) -> InputSpec:
    if not isinstance(doc, dict):
        raise FormatError(where, "a JSON object", type(doc).__name__)
    refuse_unknown(doc, {"tensor", "column", "columns", "dtype", "shape", "preprocess"}, where=where)
    tensor = _tensor(require(doc, "tensor", str, where=where), f"{where}.tensor")
    prep = require(doc, "preprocess", dict, where=where)
    kind = prep.get("kind")
    dtype = require(doc, "dtype", str, where=where)
    if dtype not in INPUT_DTYPES:
        raise FormatError(f"{where}.dtype", f"one of {list(INPUT_DTYPES)}", dtype)
    shape = _shape(require(doc, "shape", list, where=where), f"{where}.shape")
    image = None
    columns: tuple[str, ...]
    if kind == "email-text":
        refuse_unknown(prep, {"kind"}, where=f"{where}.preprocess")
        columns = (_column(require(doc, "column", str, where=where), f"{where}.column"),)
        _expect_io(where, dtype, shape, "string", [None, 1])
    elif kind == "image":
        image = _image(prep, f"{where}.preprocess")
        columns = (_column(require(doc, "column", str, where=where), f"{where}.column"),)
        _expect_io(where, dtype, shape, "float32", image.shape())
    elif kind == "numbers":
        refuse_unknown(prep, {"kind"}, where=f"{where}.preprocess")
        names = _nonempty(require(doc, "columns", list, where=where), f"{where}.columns")
        columns = tuple(_column(c if isinstance(c, str) else "", f"{where}.columns[{k}]") for k, c in enumerate(names))
        _unique(list(columns), f"{where}.columns", "name")
        if dtype not in FLOAT_TENSORS:
            raise FormatError(f"{where}.dtype", f"one of {list(FLOAT_TENSORS)} for numbers", dtype)
        _expect_io(where, dtype, shape, dtype, [None, len(columns)])
    else:
        raise FormatError(f"{where}.preprocess.kind", "one of ['email-text', 'image', 'numbers']", kind)
    if kind != "numbers" and "columns" in doc:
        raise FormatError(f"{where}.columns", "absent ('column' names the one column)", doc["columns"])
    if kind == "numbers" and "column" in doc:
        raise FormatError(f"{where}.column", "absent ('columns' lists the numeric columns)", doc["column"])
    return InputSpec(tensor, columns, dtype, tuple(shape), kind, image)


def _image(prep: dict[str, Any], where: str) -> ImagePrep:
    refuse_unknown(prep, {"kind", "mode", "width", "height", "resample", "scale", "offset", "layout", "max_bytes",
                          "max_pixels", "formats"}, where=where)
    mode = require(prep, "mode", str, where=where)
    if mode not in MODES:
        raise FormatError(f"{where}.mode", f"one of {list(MODES)}", mode)
    width, height = (_int(prep, k, where, 1, MAX_SIDE) for k in ("width", "height"))
    resample = require(prep, "resample", str, where=where)
    if resample not in RESAMPLE:
        raise FormatError(f"{where}.resample", f"one of {list(RESAMPLE)}", resample)
    layout = require(prep, "layout", str, where=where)
    if layout not in LAYOUTS:
        raise FormatError(f"{where}.layout", f"one of {list(LAYOUTS)}", layout)
    scale, offset = (_finite(prep, k, where) for k in ("scale", "offset"))
    formats = require(prep, "formats", list, where=where)
    if not formats or not all(f in IMAGE_FORMATS for f in formats) or len(set(formats)) != len(formats):
        raise FormatError(f"{where}.formats", f"a non-empty list of distinct {list(IMAGE_FORMATS)}", formats)
    return ImagePrep(mode, width, height, resample, scale, offset, layout, _int(prep, "max_bytes", where, 1,
                     MAX_IMAGE_BYTES), _int(prep, "max_pixels", where, 1, 1 << 28), tuple(formats))


def _output(doc: Any, where: str, classes: tuple[str, ...] | None) -> OutputSpec:
    if not isinstance(doc, dict):
        raise FormatError(where, "a JSON object", type(doc).__name__)
    kind = doc.get("kind")
    extra = {"probability": {"class_index"}, "label": {"dtype"}}.get(str(kind), set())
    refuse_unknown(doc, {"tensor", "column", "kind"} | extra, where=where)
    tensor = _tensor(require(doc, "tensor", str, where=where), f"{where}.tensor")
    column = _column(require(doc, "column", str, where=where), f"{where}.column")
    if kind not in ("probability", "probabilities", "label", "class", "value"):
        raise FormatError(f"{where}.kind", "one of ['probability', 'probabilities', 'label', 'class', 'value']", kind)
    index = dtype = None
    if kind == "probability":
        index = _int(doc, "class_index", where, 0, 1 << 20)
        if classes is not None and index >= len(classes):
            raise FormatError(f"{where}.class_index", f"0..{len(classes) - 1} (the contract's classes)", index)
    if kind == "label":
        dtype = require(doc, "dtype", str, where=where)
        if dtype not in LABEL_DTYPES:
            raise FormatError(f"{where}.dtype", f"one of {list(LABEL_DTYPES)}", dtype)
    if kind == "class" and classes is None:
        raise FormatError(f"{where}.kind", "'class' only with the contract's 'classes' (names of labels 0..C-1)",
                          kind)
    return OutputSpec(tensor, column, str(kind), index, dtype)


def _input_json(spec: InputSpec) -> dict[str, Any]:
    doc: dict[str, Any] = {"tensor": spec.tensor, "dtype": spec.dtype, "shape": list(spec.shape)}
    if spec.kind == "numbers":
        doc["columns"] = list(spec.columns)
    else:
        doc["column"] = spec.columns[0]
    prep: dict[str, Any] = {"kind": spec.kind}
    if spec.image is not None:
        im = spec.image
        prep.update(mode=im.mode, width=im.width, height=im.height, resample=im.resample, scale=im.scale,
                    offset=im.offset, layout=im.layout, max_bytes=im.max_bytes, max_pixels=im.max_pixels,
                    formats=list(im.formats))
    doc["preprocess"] = prep
    return doc


def _output_json(spec: OutputSpec) -> dict[str, Any]:
    doc: dict[str, Any] = {"tensor": spec.tensor, "column": spec.column, "kind": spec.kind}
    if spec.class_index is not None:
        doc["class_index"] = spec.class_index
    if spec.dtype is not None:
        doc["dtype"] = spec.dtype
    return doc


def _expect_io(where: str, dtype: str, shape: list[int | None], want_dtype: str, want_shape: list[int | None]) -> None:
    if dtype != want_dtype:
        raise FormatError(f"{where}.dtype", f"{want_dtype} (what the preprocessing yields)", dtype)
    if shape != want_shape:
        raise FormatError(f"{where}.shape", f"{want_shape} (what the preprocessing yields)", shape)


def _shape(value: list[Any], where: str) -> list[int | None]:
    if not value or value[0] is not None:
        raise FormatError(where, "a list starting with null (the batch dimension)", value)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value[1:]):
        raise FormatError(where, "positive integers after the batch dimension", value)
    return value


def _classes(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(c, str) and c for c in value):
        raise FormatError(where, "null or a list of two or more non-empty strings", value)
    _unique(value, where, "class name")
    return tuple(value)


def _int(doc: dict[str, Any], key: str, where: str, low: int, high: int) -> int:
    value = require(doc, key, int, where=where)
    if not low <= value <= high:
        raise FormatError(f"{where}.{key}", f"an integer in {low}..{high}", value)
    return int(value)


def _finite(doc: dict[str, Any], key: str, where: str) -> float:
    value = require(doc, key, (int, float), where=where)
    if value != value or value in (float("inf"), float("-inf")):
        raise FormatError(f"{where}.{key}", "a finite number", value)
    return float(value)


def _tensor(name: str, where: str) -> str:
    if not _NAME.fullmatch(name):
        raise FormatError(where, f"a tensor name matching {_NAME.pattern}", name)
    return name


def _column(name: str, where: str) -> str:
    if not _COLUMN.fullmatch(name):
        raise FormatError(where, f"a column name matching {_COLUMN.pattern}", name)
    return name


def _nonempty(value: list[Any], where: str) -> list[Any]:
    if not value:
        raise FormatError(where, "a non-empty list", value)
    return value


def _unique(values: list[str], where: str, what: str) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise FormatError(where, f"unique {what}s", f"{v!r} twice")
        seen.add(v)


# The spam filter's contract: the provider's own model and every tuned model trained from a recipe.
SPAM_TASK = "text-classification"
SPAM_CONTRACT: dict[str, Any] = {
    "id_column": "message_id",
    "inputs": [{"tensor": "text", "column": "text", "dtype": "string", "shape": [None, 1],
                "preprocess": {"kind": "email-text"}}],
    "outputs": [{"tensor": "probabilities", "column": "spam_probability", "kind": "probability", "class_index": 1},
                {"tensor": "label", "column": "label", "kind": "label", "dtype": "int8"}],
    "classes": ["ham", "spam"],
}

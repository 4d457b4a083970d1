"""The preprocessing vocabulary the enclave implements: a card names an entry, never supplies code.

Each entry turns one shard's column(s) into a tensor with one row per input row (see `wire.contract`):
``email-text`` (strings -> string [N, 1]), ``image`` (PNG/JPEG bytes -> float32, decoded with Pillow),
``numbers`` (numeric columns -> float32/float64 [N, k]). ``padding`` gives the filler row that fixed-size
chunks are padded with. Errors name the shard row, never its content or id (the message leaves the
enclave): the owner learns which row from its own input.

Determinism: Pillow's PNG and JPEG decoders, mode conversion and resampling are integer or fixed-order
float code, so the same bytes give the same pixels on the same Pillow build (the build is measured: it is
in the worker's closure); the scale and offset are applied in float32, in that order.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from wire.contract import ImagePrep, InputSpec

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG"}
_MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff"}
_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR,
             "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


class InputRefused(ValueError):
    """A row does not fit the model's contract; the message names the row and the rule, not the content.

    `found` is what the content was (an image's size, dimensions or kind): for the owner's own checks
    (`detail()`), never in the message, which the enclave's refusal shows the platform."""

    def __init__(self, message: str, found: str | None = None) -> None:
        super().__init__(message)
        self.found = found

    def detail(self) -> str:
        """The message with what was found, for the owner who holds the content."""
        return f"{self}, found {self.found}" if self.found is not None else str(self)


def tensor(spec: InputSpec, columns: dict[str, Sequence[object]], rows: int,
           index: Sequence[int] | None = None) -> np.ndarray:
    """The input tensor for `rows` rows of `columns` (values by column name), shape [rows, ...].

    `index[i]` is row i's number in the shard, for errors (default: i).
    """
    where = list(index) if index is not None else list(range(rows))
    if spec.kind == "email-text":
        return _texts(columns[spec.columns[0]], rows, where)
    if spec.kind == "image":
        if spec.image is None:
            raise ValueError(f"input {spec.tensor!r}: image preprocessing without its parameters")
        return _images(columns[spec.columns[0]], spec.image, rows, where)
    return _numbers(columns, spec, rows, where)


def padding(spec: InputSpec) -> np.ndarray:
    """One filler row for `spec` (an empty text, a black image, zeros), shape [1, ...]."""
    if spec.kind == "email-text":
        return np.full((1, 1), "", dtype=object)
    return np.zeros([1, *(d for d in spec.shape[1:] if d is not None)], dtype=np.dtype(spec.dtype))


def order_key(spec: InputSpec, columns: dict[str, Sequence[object]]) -> list[int] | None:
    """A row order that runs faster and changes no bits (texts of similar length together), or None."""
    if spec.kind != "email-text":
        return None
    values = columns[spec.columns[0]]
    return sorted(range(len(values)), key=lambda i: len(v) if isinstance(v := values[i], str) else 0)


def _texts(values: Sequence[object], rows: int, where: list[int]) -> np.ndarray:
    out = np.empty((rows, 1), dtype=object)
    for i, text in enumerate(values):
        if not isinstance(text, str):
            raise InputRefused(f"shard row {where[i]}: email-text expects a string, found {type(text).__name__}")
        out[i, 0] = text
    return out


def _numbers(columns: dict[str, Sequence[object]], spec: InputSpec, rows: int, where: list[int]) -> np.ndarray:
    out = np.empty((rows, len(spec.columns)), dtype=np.dtype(spec.dtype))
    for k, name in enumerate(spec.columns):
        for i, value in enumerate(columns[name]):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                found = value if isinstance(value, float) else "null" if value is None else type(value).__name__
                raise InputRefused(f"shard row {where[i]}, column {name!r}: numbers expects a finite number, "
                                   f"found {found}")
            with np.errstate(over="ignore"):
                out[i, k] = value
            if not math.isfinite(out[i, k]):  # finite as a Python float, beyond the tensor's dtype (1e39 in float32)
                raise InputRefused(f"shard row {where[i]}, column {name!r}: numbers expects a finite number within "
                                   f"{spec.dtype}, found one beyond it")
    return out


def _images(values: Sequence[object], prep: ImagePrep, rows: int, where: list[int]) -> np.ndarray:
    out = np.empty([rows, *(d for d in prep.shape()[1:] if d is not None)], dtype=np.float32)
    for i, data in enumerate(values):
        if not isinstance(data, bytes):
            raise InputRefused(f"shard row {where[i]}: image expects bytes, found {type(data).__name__}")
        out[i] = decode_image(data, prep, f"shard row {where[i]}")
    return out


def image_format(data: bytes) -> str | None:
    """'png' or 'jpeg' by the file's magic bytes, else None."""
    return next((name for name, magic in _MAGIC.items() if data.startswith(magic)), None)


def check_image(data: bytes, prep: ImagePrep, where: str) -> tuple[int, int]:
    """Check size, format and dimensions without decoding the pixels; returns (width, height).

    Raises InputRefused naming `where` and the rule; its `found` holds the value found.
    """
    if len(data) > prep.max_bytes:
        raise InputRefused(f"{where}: expected at most {prep.max_bytes} bytes per image (the model's contract)",
                           found=str(len(data)))
    kind = image_format(data)
    if kind not in prep.formats:
        raise InputRefused(f"{where}: expected a {' or '.join(f.upper() for f in prep.formats)} image",
                           found=f"a {kind.upper()} image" if kind else "bytes of another kind")
    try:
        with Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[kind]]) as im:
            width, height = im.size
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's errors for a damaged header
        raise InputRefused(f"{where}: expected a readable image",
                           found=f"a damaged {kind.upper()} image ({type(exc).__name__})") from None
    if width * height > prep.max_pixels:
        raise InputRefused(f"{where}: expected at most {prep.max_pixels} pixels (the model's contract)",
                           found=f"{width} x {height} = {width * height}")
    return width, height


def decode_image(data: bytes, prep: ImagePrep, where: str) -> np.ndarray:
    """Decode, convert, resize and normalise one image to its tensor row (float32, the layout's shape)."""
    check_image(data, prep, where)
    kind = image_format(data)
    assert kind is not None  # check_image refused any other bytes
    try:
        with Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[kind]]) as im:
            im.load()
            pixels = im.convert(prep.mode).resize((prep.width, prep.height), resample=_RESAMPLE[prep.resample])
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputRefused(f"{where}: expected a decodable image",
                           found=f"a {kind.upper()} image whose decoding failed ({type(exc).__name__})") from None
    array = np.asarray(pixels, dtype=np.float32)
    array = array * np.float32(prep.scale) + np.float32(prep.offset)
    if array.ndim == 2:
        array = array[:, :, None]  # H, W, C
    if prep.layout == "nchw":
        return np.ascontiguousarray(array.transpose(2, 0, 1))
    if prep.layout == "flat":
        return np.ascontiguousarray(array.transpose(2, 0, 1)).reshape(-1)
    return array

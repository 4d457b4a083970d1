"""The image example: scikit-learn's handwritten digits (1,797 images of 8 x 8, shipped inside the package; no
download). The provider trains a classifier on its share and publishes it with an image contract; the owner's
share is written out as a folder of PNG and JPEG files, as a scanner would leave them (dark ink on white
paper, 32 x 32), which the enclave decodes and shrinks back to 8 x 8 (`sdk.contracts.DIGITS_CONTRACT`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from sdk.contracts import DIGIT_SIDE

SCALE = 4  # pixels per digit cell in the owner's files: 32 x 32 images
JPEG_EVERY = 5  # every fifth file is a JPEG, the others PNG
OPSET = 17


@dataclass(frozen=True)
class DigitsSplit:
    train_x: np.ndarray  # float64 [n, 64], 0 (paper) .. 16 (ink)
    train_y: np.ndarray  # int64 [n]
    test_x: np.ndarray
    test_y: np.ndarray


def digits_split(test_fraction: float = 0.4, seed: int = 0) -> DigitsSplit:
    """The provider's and the owner's shares of the digits, stratified and deterministic."""
    data = load_digits()
    tx, ox, ty, oy = train_test_split(data.data, data.target.astype(np.int64), test_size=test_fraction,
                                      random_state=seed, stratify=data.target)
    return DigitsSplit(tx, ty, ox, oy)


def train_digits_model(x: np.ndarray, y: np.ndarray, seed: int = 0) -> LogisticRegression:
    """Multinomial logistic regression on the 64 pixel values scaled to 0..1 (`x / 16`, as the contract reads)."""
    with threadpool_limits(limits=1):  # BLAS threads on a shared machine: 0.1 s becomes 15 s
        return LogisticRegression(C=10.0, max_iter=5000, random_state=seed).fit(np.asarray(x) / 16.0, y)


def model_inputs(x: np.ndarray) -> np.ndarray:
    """What the model reads for raw digits (0..16): float32 [n, 64] in 0..1."""
    return (np.asarray(x, dtype=np.float64) / 16.0).astype(np.float32)


def export_digits_onnx(model: LogisticRegression) -> bytes:
    """ONNX bytes: input ``pixels`` float32 [N, 64]; outputs ``label`` int64 [N], ``probabilities`` float32 [N, 10]."""
    from skl2onnx import convert_sklearn  # heavy import; only the provider's export needs it
    from skl2onnx.common.data_types import FloatTensorType

    onnx_model = convert_sklearn(model, initial_types=[("pixels", FloatTensorType([None, DIGIT_SIDE * DIGIT_SIDE]))],
                                 options={id(model): {"zipmap": False}}, target_opset=OPSET, name="cscore-digits")
    names = tuple(o.name for o in onnx_model.graph.output)
    if names != ("label", "probabilities"):
        raise RuntimeError(f"skl2onnx produced outputs {names}, expected ('label', 'probabilities')")
    return bytes(onnx_model.SerializeToString())


def digit_image(pixels: np.ndarray, fmt: str) -> bytes:
    """One digit (64 values, 0..16) as a 32 x 32 grayscale PNG or JPEG: dark ink on white paper."""
    gray = np.round(255.0 - np.asarray(pixels, dtype=np.float64).reshape(DIGIT_SIDE, DIGIT_SIDE) * 255.0 / 16.0)
    image = Image.fromarray(gray.astype(np.uint8), mode="L").resize((DIGIT_SIDE * SCALE, DIGIT_SIDE * SCALE),
                                                                    Image.Resampling.NEAREST)
    out = io.BytesIO()
    image.save(out, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return out.getvalue()


def write_digit_files(x: np.ndarray, y: np.ndarray, folder: Path, limit: int | None = None) -> dict[str, int]:
    """Write the owner's digits as files under `folder`; returns {file name: true digit}."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i, (pixels, label) in enumerate(zip(x[:limit], y[:limit], strict=True)):
        fmt, ext = ("JPEG", "jpg") if i % JPEG_EVERY == JPEG_EVERY - 1 else ("PNG", "png")
        name = f"scan-{i:04d}.{ext}"
        (folder / name).write_bytes(digit_image(pixels, fmt))
        truth[name] = int(label)
    return truth

"""enclave.preprocess, fast: each entry's tensor (values, type, shape) on inputs built in memory, each refusal word for
word with what the owner's `detail()` adds, the filler rows and the text order (milliseconds in all, no model).

Images are a few pixels made with Pillow; the expected tensors are written out by hand where they are small, or
Pillow's own conversion and resize scaled in float32 (the enclave runs the measured Pillow build).
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from enclave.preprocess import InputRefused, check_image, decode_image, image_format, order_key, padding, tensor
from wire.contract import ImagePrep, InputSpec

TEXT = InputSpec("text", ("body",), "string", (None, 1), "email-text")
NUMBERS = InputSpec("x", ("age", "bmi"), "float32", (None, 2), "numbers")


def _prep(**changes: object) -> ImagePrep:
    fields: dict[str, object] = {"mode": "L", "width": 3, "height": 2, "resample": "nearest", "scale": 1.0,
                                 "offset": 0.0, "layout": "nhwc", "max_bytes": 1 << 20, "max_pixels": 10_000,
                                 "formats": ("png", "jpeg")}
    return ImagePrep(**{**fields, **changes})  # type: ignore[arg-type]


def _image_spec(prep: ImagePrep) -> InputSpec:
    return InputSpec("pixels", ("image",), "float32", tuple(prep.shape()), "image", prep)


def _encoded(image: Image.Image, kind: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=kind)
    return out.getvalue()


# 3 x 2 grey pixels, each value its own: nearest resizing to the same size keeps them
GREY = [[0, 10, 20], [200, 250, 255]]
GREY_PNG = _encoded(Image.fromarray(np.array(GREY, np.uint8), "L"))
RGB = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 13
RGB_PNG = _encoded(Image.fromarray(RGB, "RGB"))
# 9 x 7 colours: made smaller or larger, each filter gives its own pixels
SOURCE_PNG = _encoded(Image.fromarray((np.arange(7 * 9 * 3).reshape(7, 9, 3) * 37 % 251).astype(np.uint8), "RGB"))


def _refusal(call: object, *args: object) -> tuple[str, str | None, str]:
    with pytest.raises(InputRefused) as refused:
        call(*args)  # type: ignore[operator]
    assert refused.value.__cause__ is None
    return str(refused.value), refused.value.found, refused.value.detail()


# --- email-text -----------------------------------------------------------------------------------------------------

def test_texts_become_a_column_of_python_strings() -> None:
    out = tensor(TEXT, {"body": ["free money", "", "caf\u00e9"], "other": [1, 2, 3]}, 3)
    assert (out.dtype, out.shape, out[:, 0].tolist()) == (np.dtype(object), (3, 1), ["free money", "", "caf\u00e9"])


def test_a_text_that_is_not_a_string_is_refused_naming_its_shard_row() -> None:
    assert _refusal(tensor, TEXT, {"body": ["a", "b", None]}, 3) == (
        "shard row 2: email-text expects a string, found NoneType", None,
        "shard row 2: email-text expects a string, found NoneType")
    assert _refusal(tensor, TEXT, {"body": ["a", b"b"]}, 2, [40, 41])[0] == (
        "shard row 41: email-text expects a string, found bytes")


def test_texts_are_ordered_by_length_and_other_inputs_keep_their_order() -> None:
    assert order_key(TEXT, {"body": ["ccc", "a", None, "bb", 7]}) == [2, 4, 1, 3, 0]  # not a string: length 0
    assert order_key(TEXT, {"body": ["ccc", "a", None]}) == [2, 1, 0]
    assert order_key(NUMBERS, {"age": [3.0, 1.0]}) is None
    assert order_key(_image_spec(_prep()), {"image": [b"x"]}) is None


def test_filler_rows_are_an_empty_text_zeros_or_a_black_image() -> None:
    text = padding(TEXT)
    assert (text.dtype, text.shape, text.tolist()) == (np.dtype(object), (1, 1), [[""]])
    numbers = padding(InputSpec("x", ("a", "b", "c"), "float64", (None, 3), "numbers"))
    assert (numbers.dtype, numbers.shape, numbers.tolist()) == (np.dtype(np.float64), (1, 3), [[0.0, 0.0, 0.0]])
    image = padding(_image_spec(_prep(mode="RGB", layout="nchw")))
    assert (image.dtype, image.shape, float(np.abs(image).max())) == (np.dtype(np.float32), (1, 3, 2, 3), 0.0)


# --- numbers --------------------------------------------------------------------------------------------------------

def test_numbers_fill_the_tensor_column_by_column_in_its_dtype() -> None:
    out = tensor(NUMBERS, {"bmi": [3.4e38, 0.1, -2], "age": [1, 2.5, 3]}, 3)
    assert out.dtype == np.float32 and out.shape == (3, 2)
    assert out.tolist() == [[1.0, float(np.float32(3.4e38))], [2.5, float(np.float32(0.1))], [3.0, -2.0]]
    wide = InputSpec("x", ("age", "bmi"), "float64", (None, 2), "numbers")
    out = tensor(wide, {"age": [0.1], "bmi": [1e300]}, 1)
    assert (out.dtype, out.tolist()) == (np.dtype(np.float64), [[0.1, 1e300]])


@pytest.mark.parametrize(("value", "found"), [
    (float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf"), (None, "null"), ("7", "str"),
    (True, "bool"), (False, "bool"), (b"1", "bytes"), ([1], "list")])
def test_a_value_that_is_not_a_finite_number_is_refused_naming_row_and_column(value: object, found: str) -> None:
    message = f"shard row 7, column 'bmi': numbers expects a finite number, found {found}"
    assert _refusal(tensor, NUMBERS, {"age": [1.0, 2.0], "bmi": [0.0, value]}, 2, [6, 7]) == (message, None, message)


@pytest.mark.parametrize("value", [1e39, -1e39, 10**39])
def test_a_finite_number_beyond_the_tensors_dtype_is_refused(value: float) -> None:
    message = "shard row 1, column 'age': numbers expects a finite number within float32, found one beyond it"
    with warnings.catch_warnings():  # refused, without NumPy's overflow warning on the way (logs leave the enclave)
        warnings.simplefilter("error")
        assert _refusal(tensor, NUMBERS, {"age": [1.0, value], "bmi": [0.0, 0.0]}, 2)[0] == message
    wide = InputSpec("x", ("age", "bmi"), "float64", (None, 2), "numbers")
    assert tensor(wide, {"age": [1.0, value], "bmi": [0.0, 0.0]}, 2)[1, 0] == float(value)


# --- images ---------------------------------------------------------------------------------------------------------

def test_image_format_is_read_from_the_magic_bytes() -> None:
    assert [image_format(d) for d in (GREY_PNG, b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a", b"GIF89a", b"")] == [
        "png", "jpeg", None, None, None]


def test_an_image_is_checked_without_decoding_and_its_width_and_height_returned() -> None:
    assert check_image(GREY_PNG, _prep(), "x") == (3, 2)
    assert check_image(GREY_PNG, _prep(max_bytes=len(GREY_PNG), max_pixels=6, formats=("png",)), "x") == (3, 2)


def test_each_image_refusal_names_the_rule_and_keeps_what_was_found_for_the_owner() -> None:
    jpeg = _encoded(Image.new("L", (4, 5)), "JPEG")
    cases = [
        (GREY_PNG, _prep(max_bytes=len(GREY_PNG) - 1), f"f.png: expected at most {len(GREY_PNG) - 1} bytes per "
         "image (the model's contract)", str(len(GREY_PNG))),
        (GREY_PNG, _prep(formats=("jpeg",)), "f.png: expected a JPEG image", "a PNG image"),
        (jpeg, _prep(formats=("png",)), "f.png: expected a PNG image", "a JPEG image"),
        (b"GIF89a....", _prep(), "f.png: expected a PNG or JPEG image", "bytes of another kind"),
        (GREY_PNG[:20], _prep(), "f.png: expected a readable image", "a damaged PNG image (OSError)"),
        (b"\xff\xd8\xff" + bytes(30), _prep(), "f.png: expected a readable image",
         "a damaged JPEG image (UnidentifiedImageError)"),
        (GREY_PNG, _prep(max_pixels=5), "f.png: expected at most 5 pixels (the model's contract)", "3 x 2 = 6"),
        (jpeg, _prep(max_pixels=19), "f.png: expected at most 19 pixels (the model's contract)", "4 x 5 = 20"),
    ]
    for data, prep, message, found in cases:
        assert _refusal(check_image, data, prep, "f.png") == (message, found, f"{message}, found {found}")


def test_an_image_whose_pixels_do_not_decode_is_refused_after_its_header_was_read() -> None:
    data = bytearray(_encoded(Image.fromarray(np.full((40, 40), 7, np.uint8), "L")))
    start = data.index(b"IDAT") + 8
    data[start:start + 12] = bytes(12)  # the compressed pixels damaged, the header intact
    assert check_image(bytes(data), _prep(), "shard row 3") == (40, 40)
    assert _refusal(decode_image, bytes(data), _prep(), "shard row 3")[:2] == (
        "shard row 3: expected a decodable image", "a PNG image whose decoding failed (OSError)")


def test_only_the_decoder_of_the_format_the_magic_names_reads_the_file() -> None:
    """PNG's or JPEG's magic before a PhotoCD image, which Pillow would read as 768 x 512 if every decoder were
    allowed: the named decoder alone refuses it."""
    for magic, kind in ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG")):
        data = magic + bytes(2048 - len(magic)) + b"PCD_" + bytes(4096)
        with Image.open(io.BytesIO(data)) as im:
            assert (im.format, im.size) == ("PCD", (768, 512))
        refusal = ("f: expected a readable image", f"a damaged {kind} image (UnidentifiedImageError)")
        assert _refusal(check_image, data, _prep(max_pixels=1 << 20), "f")[:2] == refusal
        assert _refusal(decode_image, data, _prep(max_pixels=1 << 20), "f")[:2] == refusal


def test_an_image_is_decoded_resized_and_scaled_in_float32() -> None:
    row = decode_image(GREY_PNG, _prep(scale=1 / 255, offset=-0.5), "x")
    expected = np.array(GREY, np.float32)[:, :, None] * np.float32(1 / 255) + np.float32(-0.5)
    assert row.dtype == np.float32 and row.shape == (2, 3, 1) and row.tobytes() == expected.tobytes()
    assert row.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("resample", ["nearest", "box", "bilinear", "bicubic", "lanczos"])
def test_each_resampling_filter_is_pillows_own(resample: str) -> None:
    """9 x 7 colours made 5 x 4, grey 4 x 3, a grey 3 x 2 made 4 x 4 colours: Pillow's conversion and resize."""
    filters = {"nearest": Image.Resampling.NEAREST, "box": Image.Resampling.BOX,
               "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
               "lanczos": Image.Resampling.LANCZOS}
    for data, mode, size in ((SOURCE_PNG, "RGB", (5, 4)), (SOURCE_PNG, "L", (4, 3)), (GREY_PNG, "RGB", (4, 4))):
        prep = _prep(mode=mode, width=size[0], height=size[1], resample=resample, scale=0.5, offset=0.25)
        with Image.open(io.BytesIO(data)) as im:
            pillow = np.asarray(im.convert(mode).resize(size, resample=filters[resample]), np.float32)
        expected = (pillow * np.float32(0.5) + np.float32(0.25)).reshape(size[1], size[0], -1)
        assert decode_image(data, prep, "x").tobytes() == expected.tobytes()
    others = {name: decode_image(SOURCE_PNG, _prep(mode="RGB", width=5, height=4, resample=name), "x").tobytes()
              for name in filters}
    assert len(set(others.values())) == len(filters)


def test_each_layout_orders_the_pixels_as_named() -> None:
    nhwc = decode_image(RGB_PNG, _prep(mode="RGB"), "x")
    assert nhwc.shape == (2, 3, 3) and nhwc.tolist() == RGB.astype(np.float32).tolist()
    nchw = decode_image(RGB_PNG, _prep(mode="RGB", layout="nchw"), "x")
    assert nchw.shape == (3, 2, 3) and nchw.tolist() == RGB.transpose(2, 0, 1).astype(np.float32).tolist()
    assert nchw.flags["C_CONTIGUOUS"]
    flat = decode_image(RGB_PNG, _prep(mode="RGB", layout="flat"), "x")
    assert flat.shape == (18,) and flat.tolist() == RGB.transpose(2, 0, 1).reshape(-1).astype(np.float32).tolist()
    grey = decode_image(GREY_PNG, _prep(layout="nchw"), "x")
    assert grey.shape == (1, 2, 3) and grey.tolist() == [np.array(GREY, np.float32).tolist()]


def test_images_fill_one_tensor_row_each_and_refusals_name_the_shard_row() -> None:
    prep = _prep(layout="flat")
    spec = _image_spec(prep)
    out = tensor(spec, {"image": [GREY_PNG, RGB_PNG]}, 2, [10, 11])
    assert out.dtype == np.float32 and out.shape == (2, 6)
    assert out.tobytes() == np.stack([decode_image(GREY_PNG, prep, "x"), decode_image(RGB_PNG, prep, "x")]).tobytes()
    assert _refusal(tensor, spec, {"image": [GREY_PNG, "a.png"]}, 2, [10, 11])[0] == (
        "shard row 11: image expects bytes, found str")
    assert _refusal(tensor, spec, {"image": [GREY_PNG, b"GIF89a"]}, 2)[:2] == (
        "shard row 1: expected a PNG or JPEG image", "bytes of another kind")
    nchw = _image_spec(_prep(mode="RGB", layout="nchw"))
    assert tensor(nchw, {"image": [RGB_PNG]}, 1).shape == (1, 3, 2, 3)


def test_an_image_input_without_its_parameters_is_refused() -> None:
    spec = InputSpec("pixels", ("image",), "float32", (None, 6), "image", None)
    with pytest.raises(ValueError) as refused:
        tensor(spec, {"image": [GREY_PNG]}, 1)
    assert str(refused.value) == "input 'pixels': image preprocessing without its parameters"
    assert not isinstance(refused.value, InputRefused)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_a_png_is_decoded_by_pngs_decoder_whatever_order_pillow_registered_its_decoders_in(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A valid PNG holding "PCD_" at byte 2048 (in a text chunk) is a PhotoCD image to Pillow's PCD decoder, which
    reads no magic: in a process that registered PCD before PNG, opening it without naming the format decodes it as
    PCD. Checked and decoded, it is the PNG's 3 x 2 pixels."""
    text = b"c\x00" + bytes(2048 - 41 - 2) + b"PCD_" + bytes(2100)  # the chunk's data starts at byte 41
    png = GREY_PNG[:33] + _chunk(b"tEXt", text) + GREY_PNG[33:]  # after the 8-byte magic and the IHDR chunk
    Image.init()
    monkeypatch.setattr(Image, "ID", ["PCD", *[i for i in Image.ID if i != "PCD"]])
    with Image.open(io.BytesIO(png)) as im:
        assert (im.format, im.size) == ("PCD", (768, 512))
    assert check_image(png, _prep(), "x") == (3, 2)
    assert decode_image(png, _prep(), "x").tobytes() == np.array(GREY, np.float32)[:, :, None].tobytes()

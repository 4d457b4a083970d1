"""The data owner's image reader: a folder of PNG/JPEG files -> the table an image model's contract reads.

Every file is checked against the card's contract before anything is uploaded (the enclave checks again):
its format (a PDF among the images is refused, naming the file), its size in bytes and its pixel count
(`enclave.preprocess.check_image`, the same rule the enclave applies). Ids are the files' paths relative
to the folder, so results name each file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from enclave.preprocess import InputRefused, check_image
from sdk.emails import _MAGIC as FILE_MAGIC  # one table of file signatures for every reader
from sdk.paths import not_readable
from wire.contract import Contract, InputSpec

_SHOWN_REFUSALS = 10


class ImageInputError(ValueError):
    """The owner's images do not fit the model's contract; the message names each refused file."""


@dataclass(frozen=True)
class ImageReport:
    """One input file: its name (the result id), its pixel size, or why it was refused."""

    file: str
    width: int = 0
    height: int = 0
    error: str | None = None


def image_input(contract: Contract, model: str) -> InputSpec:
    """The contract's one image input; ImageInputError when the model does not take images."""
    images = [i for i in contract.inputs if i.kind == "image"]
    if len(images) != 1 or len(contract.inputs) != 1:
        kinds = [i.kind for i in contract.inputs]
        raise ImageInputError(f"model {model}: expected a model that takes one image per row, its contract takes "
                              f"{kinds}; choose an image model (`cscore models --task image-classification`)")
    return images[0]


def image_files(path: Path) -> list[tuple[Path, str]]:
    """The files under `path` (recursively, sorted, hidden ones skipped) with their names relative to it."""
    if path.is_file():
        return [(path, path.name)]
    if not path.is_dir():
        raise ImageInputError(not_readable(path, "a folder of PNG or JPEG images (or one image file)"))
    files = sorted(p for p in path.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise ImageInputError(f"{path}: the folder holds no files; expected PNG or JPEG images")
    return [(f, f.relative_to(path).as_posix()) for f in files]


def check_images(path: Path, contract: Contract, model: str = "the model") -> list[ImageReport]:
    """One report per file, refusals included (for a dry run); reads no file larger than the contract allows."""
    spec = image_input(contract, model)
    assert spec.image is not None  # an image input always carries its parameters
    reports = []
    for file, name in image_files(Path(path)):
        size = file.stat().st_size
        try:
            if size > spec.image.max_bytes:  # not even read: the owner's disk may hold anything
                raise InputRefused(f"{name}: expected at most {spec.image.max_bytes} bytes per image (the model's "
                                   "contract)", found=str(size))
            data = file.read_bytes()
            try:
                width, height = check_image(data, spec.image, name)
            except InputRefused as exc:
                raise InputRefused(_named(exc.detail(), name, data)) from None
            reports.append(ImageReport(name, width, height))
        except InputRefused as exc:
            reports.append(ImageReport(name, error=exc.detail()))
    return reports


def read_images(path: Path, contract: Contract, model: str = "the model") -> pa.Table:
    """The table to submit: the contract's id column (file names) and its image column (the files' bytes).

    Raises ImageInputError naming every refused file (the first ten, and how many in all) before any upload.
    """
    spec = image_input(contract, model)
    reports = check_images(path, contract, model)
    refused = [r for r in reports if r.error]
    if refused:
        shown = "\n  ".join(r.error or "" for r in refused[:_SHOWN_REFUSALS])
        more = f"\n  ... and {len(refused) - _SHOWN_REFUSALS} more" if len(refused) > _SHOWN_REFUSALS else ""
        raise ImageInputError(f"{path}: {len(refused)} of {len(reports)} file(s) refused for {model}; nothing "
                              f"was uploaded:\n  {shown}{more}")
    root = Path(path)
    names = [r.file for r in reports]
    data = [(root / n if root.is_dir() else root).read_bytes() for n in names]
    return pa.table({contract.id_column: pa.array(names, pa.string()), spec.columns[0]: pa.array(data, pa.binary())})


def _named(message: str, name: str, data: bytes) -> str:
    """A refusal that says what the file is when it is not an image at all (a PDF, a ZIP, text)."""
    if "found bytes of another kind" in message:
        what = next((w for magic, w in FILE_MAGIC if data.startswith(magic)), None)
        return message.replace("found bytes of another kind", f"found {what or 'a file that is not an image'}")
    return message

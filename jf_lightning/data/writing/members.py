"""Input bytes -> shard members, with the bad inputs every tool meets named as one kind each."""

from __future__ import annotations

import io
import warnings

from PIL import Image

from jf_lightning.data.writing.writer import BadInput

# PIL format -> the member suffix the reader takes for it; these keep their bytes as they are.
_KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


def image_member(data: bytes, where: str) -> tuple[str, bytes]:
    """(suffix, bytes) of an image member: JPEG, PNG and WebP files as they are (no re-encoding
    loss; only their header is read here, the writer's reader check decodes them whole); any other
    format PIL reads (GIF, BMP, TIFF, ...) re-encoded as PNG, since the reader takes only
    jpg/png/webp members."""
    if not data:
        raise BadInput("empty image file", where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # the header only: the reader's check decodes it whole
            suffix = _KEPT_FORMATS.get(image.format or "")
            if suffix is not None:
                return suffix, data
            image.load()
    except Image.UnidentifiedImageError:
        raise BadInput("unreadable image", f"{where} (not an image format PIL reads)") from None
    except Exception as err:  # noqa: BLE001 (PIL raises many types for a bad file)
        raise BadInput("unreadable image", f"{where} ({type(err).__name__}: {err})") from None
    if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.mode else "RGB")  # modes PNG cannot hold (CMYK, YCbCr)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "png", buffer.getvalue()


def text_member(data: bytes | str | None, where: str, what: str = "text") -> bytes:
    """UTF-8 bytes of a caption, prompt or document; missing, non-UTF-8 and blank ones are refused."""
    if data is None:
        raise BadInput(f"no {what}", where)
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise BadInput(f"{what} not UTF-8", f"{where} ({err})") from None
    if not isinstance(data, str):
        raise BadInput(f"{what} not a string", f"{where} ({type(data).__name__})")
    if not data.strip():
        raise BadInput(f"empty {what}", where)
    try:
        return data.encode("utf-8")
    except UnicodeEncodeError as err:  # text read with surrogateescape: the file held invalid UTF-8
        raise BadInput(f"{what} not UTF-8", f"{where} ({err.reason})") from None

"""WebDataset sources: shard patterns -> streams of decoded raw samples, one kind per source.

Only the members a layout names are read and decoded (images through PIL, ``txt`` as UTF-8, ``json``,
``.npy`` with pickling off). webdataset's default decoders would unpickle ``.pyd`` / ``.pickle``
members, running code from whoever wrote the shard, so the tars are read by ``reader.py`` (tarfile, with
webdataset's key grouping) and everything is decoded here; unknown members are never even read out of
the tar. A record that cannot be used raises ``BadSample`` with its reason; the training and
validation streams (``split.py``) skip and count those.

Layouts (member suffixes):
- ``und``: image (``jpg``/``jpeg``/``png``/``webp``) + ``json`` with a LLaVA ``conversations`` list,
  or + ``txt`` (a caption, turned into a captioning conversation by the template);
- ``gen``: image + ``txt`` prompt, optionally ``latent.npy`` (scaled VAE latent) and ``siglip.npy``
  (REPA target); the image is not needed (nor decoded) when both are present;
- ``text``: ``txt``.
"""

from __future__ import annotations

import glob
import io
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np
from braceexpand import braceexpand
from PIL import Image, ImageOps

from jf_lightning.data.reader import BadSample, iter_records

Kind = Literal["und", "gen", "text"]
KINDS: tuple[Kind, ...] = ("und", "gen", "text")
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
MEMBERS: dict[str, frozenset[str]] = {
    "und": frozenset(IMAGE_SUFFIXES + ("json", "txt")),
    "gen": frozenset(IMAGE_SUFFIXES + ("txt", "json", "latent.npy", "siglip.npy")),
    "text": frozenset(("txt",)),
}


@dataclass
class SourceConfig:
    """One WebDataset source of one kind."""

    urls: str | list[str]
    """Shard URL pattern(s): brace patterns (``data/shard-{000..099}.tar``), local globs, or any URL
    webdataset's gopen reads (``pipe:``, ``https://``...). Local shards are checked at setup."""
    kind: Kind
    """``und`` (image + conversation/caption), ``gen`` (image + prompt) or ``text`` (plain text)."""
    weight: float = 1.0
    """Relative share among the training sources of the same kind (validation ignores it)."""

    def resolved(self) -> SourceConfig:
        """A copy with ``urls`` expanded to a concrete shard list; raises if local shards are missing."""
        if self.kind not in KINDS:
            raise ValueError(f"source {self.urls!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if not self.weight > 0:
            raise ValueError(f"source {self.urls!r}: weight must be > 0, got {self.weight}")
        return replace(self, urls=expand_urls(self.urls))


@dataclass
class RawSample:
    """A decoded sample, before templating. Which fields are set depends on ``kind``."""

    kind: Kind
    key: str
    url: str
    image: Image.Image | None = None
    text: str | None = None
    """Caption (und), prompt (gen) or the text (text)."""
    turns: list[tuple[str, str]] | None = None
    """(human, assistant) pairs of a LLaVA conversation (und with ``json``)."""
    latent: np.ndarray | None = None
    """(C, h, w) pre-encoded scaled VAE latent (gen)."""
    siglip: np.ndarray | None = None
    """(T_gen, D) pre-encoded REPA target (gen)."""
    meta: dict[str, Any] | None = None
    """The optional ``json`` member of a generation sample (the shapes world keeps its scene there for
    the SigLIP pretraining's dense target); training ignores it."""


def _is_local(url: str) -> bool:
    return urlparse(url).scheme in ("", "file")


def expand_urls(urls: str | list[str]) -> list[str]:
    """Brace-expand and glob shard patterns. Local files must exist: a one-line error names the
    pattern otherwise (remote URLs cannot be checked without reading them)."""
    patterns = [urls] if isinstance(urls, str) else list(urls)
    if not patterns:
        raise ValueError("empty shard list: give at least one shard URL pattern")
    out: list[str] = []
    for pattern in patterns:
        for url in braceexpand(pattern):
            if not _is_local(url):
                out.append(url)
                continue
            path = urlparse(url).path if url.startswith("file:") else url
            if any(c in path for c in "*?["):
                matches = sorted(glob.glob(path))
                if not matches:
                    raise FileNotFoundError(f"shard pattern {pattern!r}: glob {path!r} matches no file")
                folder = next((m for m in matches if os.path.isdir(m)), None)
                if folder is not None:
                    raise FileNotFoundError(f"shard pattern {pattern!r}: {folder!r} is a directory, not a tar file")
                out.extend(matches)
            elif os.path.isdir(path):
                raise FileNotFoundError(f"shard pattern {pattern!r}: {path!r} is a directory, not a tar file")
            elif not os.path.isfile(path):
                raise FileNotFoundError(f"shard pattern {pattern!r}: shard {path!r} does not exist")
            else:
                out.append(path)
    return out


def iter_members(url: str, kind: Kind) -> Iterator[dict[str, Any]]:
    """Raw (undecoded) member groups of one shard: {"__key__", "__url__", suffix: bytes}.

    Members the layout does not name are skipped inside the tar without being read. A shard that
    cannot be read to its end raises a one-line error naming it (the training streams skip instead).
    """
    for _, record in iter_records(url, MEMBERS[kind]):
        if "__error__" in record:
            if record["__error__"] == "empty_shard":
                return
            raise ValueError(f"shard {url} {record['__detail__']}")
        yield record


def _missing(sample: dict[str, Any], kind: Kind, what: str) -> BadSample:
    found = sorted(k for k in sample if not k.startswith("__"))
    return BadSample(
        "missing_member", sample["__url__"], sample["__key__"], f"({kind}) has no {what} member (found {found})"
    )


def _bad(sample: dict[str, Any], reason: str, message: str) -> BadSample:
    return BadSample(reason, sample["__url__"], sample["__key__"], message)


def usable_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB, as the camera meant it: EXIF orientation applied; transparency
    composited on white (what a transparent picture shows on a page); 16-bit and 32-bit integer
    greyscale scaled to 8 bits (PIL's own ``convert`` clips them, making most pixels white); CMYK and
    palettes through PIL's conversions. Orientation is applied to ``image`` itself (the decoder's own
    image)."""
    ImageOps.exif_transpose(image, in_place=True)  # its copy of an upright image costs 5% of a decode
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        wide = np.asarray(image, dtype=np.float64)  # (H, W)
        top = 65535.0 if image.mode.startswith("I;16") or wide.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(wide * (255.0 / top), 0, 255).round().astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image if image.mode == "RGB" else image.convert("RGB")


def _image(sample: dict[str, Any], kind: Kind, draft_size: int | None = None) -> Image.Image:
    suffix = next((s for s in IMAGE_SUFFIXES if s in sample), None)
    if suffix is None:
        raise _missing(sample, kind, "image (" + "/".join(IMAGE_SUFFIXES) + ")")
    try:
        image = Image.open(io.BytesIO(sample[suffix]))
        if draft_size is not None and image.format == "JPEG":
            # JPEG decodes at 1/2, 1/4 or 1/8 scale almost for free: the smallest that stays >= the
            # size the transforms resize to on both sides (so no detail they keep is lost).
            image.draft("RGB", (draft_size, draft_size))
        image.load()  # surface truncated files here, with the shard named, not later in a transform
        return usable_rgb(image)
    except Exception as exc:  # noqa: BLE001 - PIL raises many types; the message names the sample instead
        raise _bad(sample, "bad_image", f"has an unreadable {suffix}: {exc}") from None


def _json_object(sample: dict[str, Any]) -> Any:
    try:
        return json.loads(sample["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(sample, "bad_json", f"has an unreadable json: {exc}") from None


def _turns(sample: dict[str, Any], data: dict[str, Any]) -> list[tuple[str, str]]:
    conv = data.get("conversations")
    if not isinstance(conv, list) or not conv or not all(isinstance(m, dict) for m in conv):
        raise _bad(sample, "bad_json", "json has no non-empty 'conversations' list")
    roles = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}
    msgs = [(roles.get(str(m.get("from", "")).lower()), str(m.get("value", ""))) for m in conv]
    expected = ["human", "gpt"] * (len(msgs) // 2)
    if len(msgs) % 2 or [r for r, _ in msgs] != expected:
        raise _bad(sample, "bad_json", "conversations must alternate human/gpt turns, starting with human")
    return [(msgs[i][1], msgs[i + 1][1]) for i in range(0, len(msgs), 2)]


def _npy(sample: dict[str, Any], name: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(sample[name]), allow_pickle=False)  # never unpickle shard contents
    except (ValueError, OSError, EOFError) as exc:
        raise _bad(sample, "bad_array", f"has an unreadable {name}: {exc}") from None


def _text(sample: dict[str, Any]) -> str:
    try:
        text = sample["txt"].decode("utf-8")
    except UnicodeDecodeError as exc:  # skipped rather than guessed: a wrong codec trains on mojibake
        raise _bad(sample, "bad_text", f"has a txt that is not UTF-8 ({exc})") from None
    if not text.strip():
        raise _bad(sample, "empty_text", "has an empty txt")
    return text


def decode(sample: dict[str, Any], kind: Kind, draft_size: int | None = None) -> RawSample:
    """Decode the members ``kind``'s layout names; a ``BadSample`` (a ``ValueError`` whose one line
    names the shard and key) says why a record cannot be used.

    Understanding: a ``json`` holding a ``conversations`` key is the conversation; otherwise the
    ``txt`` is a caption (img2dataset's shards: ``jpg`` + ``txt`` + a ``json`` of crawl metadata).
    ``draft_size``: the side the image will be resized to; JPEGs are then decoded at a reduced scale
    that stays at or above it.
    """
    raw = RawSample(kind=kind, key=sample["__key__"], url=sample["__url__"])
    has_txt = "txt" in sample
    if kind == "text":
        if not has_txt:
            raise _missing(sample, kind, "txt")
        raw.text = _text(sample)
        return raw
    if kind == "und":
        data = _json_object(sample) if "json" in sample else None
        if isinstance(data, dict) and "conversations" in data:
            raw.turns = _turns(sample, data)
        elif has_txt:
            raw.text = _text(sample)
        else:
            raise _missing(sample, kind, "json (conversations) or txt (caption)")
        raw.image = _image(sample, kind, draft_size)
        return raw
    if not has_txt:
        raise _missing(sample, kind, "txt (prompt)")
    raw.text = _text(sample)
    if "latent.npy" in sample:
        raw.latent = _npy(sample, "latent.npy")
    if "siglip.npy" in sample:
        raw.siglip = _npy(sample, "siglip.npy")
    if "json" in sample:
        raw.meta = _json_object(sample)
    if raw.latent is None or raw.siglip is None:  # fully pre-encoded samples skip the image decode
        raw.image = _image(sample, kind, draft_size)
    return raw


def _cycle_shards(urls: list[str], kind: Kind, pick: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Member groups from the shards ``pick`` names, forever; raises if the shards hold no sample."""
    empty_in_a_row = 0
    for url in pick:
        any_sample = False
        for sample in iter_members(url, kind):
            any_sample = True
            yield sample
        empty_in_a_row = 0 if any_sample else empty_in_a_row + 1
        if empty_in_a_row > 2 * len(urls) + 8:  # every shard looked at, likely more than once
            raise ValueError(f"shards {urls[0]!r}... ({len(urls)}) hold no {kind} samples")


def _resample(urls: list[str], rng: random.Random) -> Iterator[str]:
    while True:
        yield rng.choice(urls)


def source_shard_rng(seed_key: str, kind: Kind, source_index: int) -> random.Random:
    """The RNG that draws the shards of one source of a ``ResampledStream``."""
    return random.Random(f"{seed_key}/{kind}/{source_index}")  # str seeds hash the same everywhere


class ResampledStream:
    """Infinite stream of one kind drawing shards with replacement, mixing its sources by weight: the
    order the shapes SigLIP pretraining serves its in-memory table in. (Training batches read through
    ``split.KindReader`` instead: every record once per epoch, and found again on resume.)

    Each source draws shards with replacement (resampled shards, as webdataset's ``resampled=True``)
    from its own RNG seeded by ``seed_key``. Which source the next sample comes from is drawn from the
    caller's RNG. A bad record raises (``BadSample``).
    """

    def __init__(self, sources: list[SourceConfig], seed_key: str):
        self.kind = sources[0].kind
        self._iters = []
        for i, src in enumerate(sources):
            urls = list(src.urls)  # already resolved
            shard_rng = source_shard_rng(seed_key, self.kind, i)
            self._iters.append(_cycle_shards(urls, self.kind, _resample(urls, shard_rng)))
        weights = np.array([s.weight for s in sources], dtype=np.float64)
        self._p = weights / weights.sum()

    def next(self, rng: np.random.Generator) -> RawSample:
        index = int(rng.choice(len(self._iters), p=self._p)) if len(self._iters) > 1 else 0
        return decode(next(self._iters[index]), self.kind)

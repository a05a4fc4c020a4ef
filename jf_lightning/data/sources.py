"""WebDataset sources: shard patterns -> streams of decoded raw samples, one kind per source.

Only the members a layout names are read and decoded (images through PIL, ``txt`` as UTF-8, ``json``,
``.npy`` with pickling off). webdataset's default decoders would unpickle ``.pyd`` / ``.pickle``
members, running code from whoever wrote the shard, so this module uses only webdataset's tar reader
and decodes everything itself; unknown members are never even read out of the tar.

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
import itertools
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np
from braceexpand import braceexpand
from PIL import Image
from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_iterator

Kind = Literal["und", "gen", "text"]
KINDS: tuple[Kind, ...] = ("und", "gen", "text")
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
_MEMBERS: dict[str, frozenset[str]] = {
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
                out.extend(matches)
            elif not os.path.isfile(path):
                raise FileNotFoundError(f"shard pattern {pattern!r}: shard {path!r} does not exist")
            else:
                out.append(path)
    return out


def iter_members(url: str, kind: Kind) -> Iterator[dict[str, Any]]:
    """Raw (undecoded) member groups of one shard: {"__key__", "__url__", suffix: bytes}.

    Members the layout does not name are skipped inside the tar without being read.
    """
    wanted = _MEMBERS[kind]

    def select(fname: str) -> bool:
        suffix = base_plus_ext(fname)[1]
        return suffix is not None and suffix.lower() in wanted

    with gopen(url, "rb") as stream:
        files = ({**f, "__url__": url} for f in tar_file_iterator(stream, select_files=select))
        yield from group_by_keys(files)


def _missing(sample: dict[str, Any], kind: Kind, what: str) -> ValueError:
    found = sorted(k for k in sample if not k.startswith("__"))
    return ValueError(
        f"shard {sample['__url__']}: sample {sample['__key__']!r} ({kind}) has no {what} member (found {found})"
    )


def _image(sample: dict[str, Any], kind: Kind) -> Image.Image:
    suffix = next((s for s in IMAGE_SUFFIXES if s in sample), None)
    if suffix is None:
        raise _missing(sample, kind, "image (" + "/".join(IMAGE_SUFFIXES) + ")")
    try:
        image = Image.open(io.BytesIO(sample[suffix]))
        image.load()  # surface truncated files here, with the shard named, not later in a transform
    except Exception as exc:  # PIL raises many types; the message names the sample instead
        raise ValueError(
            f"shard {sample['__url__']}: sample {sample['__key__']!r} has an unreadable {suffix}: {exc}"
        ) from exc
    return image


def _json_object(sample: dict[str, Any]) -> Any:
    try:
        return json.loads(sample["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"shard {sample['__url__']}: sample {sample['__key__']!r} has an unreadable json: {exc}") from None


def _turns(sample: dict[str, Any]) -> list[tuple[str, str]]:
    where = f"shard {sample['__url__']}: sample {sample['__key__']!r}"
    data = _json_object(sample)
    conv = data.get("conversations") if isinstance(data, dict) else None
    if not isinstance(conv, list) or not conv:
        raise ValueError(f"{where}: json has no non-empty 'conversations' list")
    roles = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}
    msgs = [(roles.get(str(m.get("from", "")).lower()), str(m.get("value", ""))) for m in conv]
    expected = ["human", "gpt"] * (len(msgs) // 2)
    if len(msgs) % 2 or [r for r, _ in msgs] != expected:
        raise ValueError(f"{where}: conversations must alternate human/gpt turns, starting with human")
    return [(msgs[i][1], msgs[i + 1][1]) for i in range(0, len(msgs), 2)]


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)  # never unpickle shard contents


def decode(sample: dict[str, Any], kind: Kind) -> RawSample:
    """Decode the members ``kind``'s layout names; a one-line error names what is missing."""
    raw = RawSample(kind=kind, key=sample["__key__"], url=sample["__url__"])
    has_txt = "txt" in sample
    if has_txt:
        raw.text = sample["txt"].decode("utf-8")
    if kind == "text":
        if not has_txt:
            raise _missing(sample, kind, "txt")
        return raw
    if kind == "und":
        if "json" in sample:
            raw.turns = _turns(sample)
        elif not has_txt:
            raise _missing(sample, kind, "json (conversations) or txt (caption)")
        raw.image = _image(sample, kind)
        return raw
    if not has_txt:
        raise _missing(sample, kind, "txt (prompt)")
    if "latent.npy" in sample:
        raw.latent = _npy(sample["latent.npy"])
    if "siglip.npy" in sample:
        raw.siglip = _npy(sample["siglip.npy"])
    if "json" in sample:
        raw.meta = _json_object(sample)
    if raw.latent is None or raw.siglip is None:  # fully pre-encoded samples skip the image decode
        raw.image = _image(sample, kind)
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
    """Infinite training stream of one kind, mixing its sources by weight.

    Each source draws shards with replacement (resampled shards, as webdataset's ``resampled=True``)
    from its own RNG seeded by ``seed_key`` (seed, rank, worker), so a worker's sample sequence is a
    function of the seed and the worker. Which source the next sample comes from is drawn from the
    caller's RNG (the per-batch RNG).
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


class OrderedStream:
    """Validation stream of one kind: every source's shards in order, cycled when exhausted.

    ``read(offset, count)`` returns samples ``offset .. offset + count - 1`` of that fixed order, so a
    validation batch is the same whichever worker or rank builds it. Reads must move forward (they do:
    a worker builds increasing batch indices); skipped samples are never decoded.
    """

    def __init__(self, sources: list[SourceConfig]):
        self.kind = sources[0].kind
        self._urls = [url for src in sources for url in src.urls]
        self._iter: Iterator[dict[str, Any]] | None = None
        self._pos = 0

    def read(self, offset: int, count: int) -> list[RawSample]:
        if self._iter is None or offset < self._pos:
            self._iter, self._pos = _cycle_shards(self._urls, self.kind, itertools.cycle(self._urls)), 0
        for _ in range(offset - self._pos):
            next(self._iter)
        self._pos = offset + count
        return [decode(next(self._iter), self.kind) for _ in range(count)]

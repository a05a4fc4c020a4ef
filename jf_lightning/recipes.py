"""Reading recipe files and saying what is wrong with them in one line: a recipe's chain of ``base:``
files, checks of a config file the parser would report without naming it, and jsonargparse's errors
condensed to the key, the problem and the nearest valid key."""

from __future__ import annotations

import argparse
import difflib
import re
from pathlib import Path

import yaml

from jf_lightning.inputs import UserInputError


def config_files(args: list[str]) -> list[str]:
    """The files of ``-c`` / ``--config`` in ``args``, in order."""
    files = []
    for flag, after in zip(args, [*args[1:], None]):
        if flag in ("-c", "--config") and after is not None:
            files.append(after)
        elif flag.startswith("--config="):
            files.append(flag.split("=", 1)[1])
    return files


def expand_bases(args: list[str]) -> list[str]:
    """Each ``-c recipe.yaml`` becomes ``-c <base of its base> -c <its base> -c recipe.yaml``: a recipe
    names what it builds on with a top-level ``base:`` (a path relative to the recipe), and states only
    what differs. Later files override earlier ones: values and plain lists are replaced, mappings and
    ``init_args`` of the same ``class_path`` merge (jsonargparse), list entries of the same class too."""
    out: list[str] = []
    i = 0
    while i < len(args):
        flag, value = args[i], None
        if flag in ("-c", "--config") and i + 1 < len(args):
            value, i = args[i + 1], i + 2
        elif flag.startswith("--config="):
            value, i = flag.split("=", 1)[1], i + 1
        else:
            out.append(flag)
            i += 1
            continue
        out += [part for path in base_chain(value) for part in ("-c", path)]
    return out


def base_chain(path: str, seen: tuple[str, ...] = ()) -> list[str]:
    """``path``'s bases, farthest first, then ``path``; one-line errors for what a parser would report
    without naming the file (an empty file, broken YAML, a missing base, a cycle)."""
    file = Path(path)
    if not file.is_file():
        return [path]  # the parser says it does not exist
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserInputError(f"{path}: not valid YAML{where} ({getattr(err, 'problem', err)})") from None
    if data is None:
        raise UserInputError(
            f"{path} is empty: a config needs at least one section (model, data, trainer, ...)"
        )
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: a config is a mapping of sections, not a {type(data).__name__}")
    if not data.get("base"):
        return [path]
    base = str(file.parent / str(data["base"]))
    if base in seen or base == path:
        raise UserInputError(
            f"{path}: base {data['base']!r} builds on itself ({' -> '.join((*seen, path, base))})"
        )
    if not Path(base).is_file():
        raise UserInputError(f"{path}: its base {data['base']!r} does not exist (looked for {base})")
    return [*base_chain(base, (*seen, path)), path]


def describe_parse_error(err: argparse.ArgumentError, known: list[str]) -> str:
    """jsonargparse's error as one line: the key, what was wrong, and the nearest of the ``known`` keys."""
    text = str(err)
    if "failed: " in text:  # a link's compute_fn (the model config) refused the value
        return text.split("failed: ", 1)[1].splitlines()[0]
    nested = _nested_error(text)
    if nested is not None:
        key, problem = nested
        return with_suggestion(f"unknown key {key!r}", key, known) if problem is None else f"{key}: {problem}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    unknown = re.search(r"unrecognized arguments: --?([\w.]+)|does not accept option '([\w.]+)'", text)
    option = re.search(r"Option '(\w+)' is not accepted", text)
    key = re.search(r'(?:Parser key|Key) "([\w.]+)"', text)
    if unknown:
        name = unknown.group(1) or unknown.group(2)
        return with_suggestion(f"unknown key {name!r}", name, known)
    if option:
        where = f"{key.group(1)}.init_args." if key else ""
        name = where + option.group(1)
        return with_suggestion(f"unknown key {name!r}", name, known)
    detail = next(
        (line for line in lines[1:] if not line.startswith(("Subtypes", "Errors", "Given value"))), ""
    )
    return f"{key.group(1)}: {detail}" if key else " ".join(lines[:2])


_NOISE = ("Does not validate", "Subtypes", "Errors", "Given value", "- Expected a <class 'NoneType'>")


def _nested_error(text: str) -> tuple[str, str | None] | None:
    """The deepest problem of a nested class spec (``model`` -> its ``init_args`` -> the typed model
    ``config``), as (full key, problem); problem None for an unknown key. None when not nested."""
    keys: list[str] = []
    for line in (raw.strip() for raw in text.splitlines()):
        if not line or line.startswith(_NOISE):
            continue
        if found := re.match(r'Parser key "([\w.]+)":', line):
            keys.append(found.group(1))
        elif line.startswith("- Problem with given class_path"):
            # A stage's arguments sit under init_args; the model config's fields (a dataclass) do not.
            if not line.rstrip("':").endswith("JanusFlowConfig"):
                keys.append("init_args")
        elif found := re.match(r"Group '([\w.]+)' does not accept option '([\w.]+)'", line):
            return ".".join([*keys, found.group(1), found.group(2)]), None
        elif found := re.match(r"Option '(\w+)' is not accepted", line):
            return ".".join([*keys, found.group(1)]), None
        elif len(keys) > 1:
            return ".".join(k for k in keys if k), line.removeprefix("- ")
    return None


def with_suggestion(message: str, name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f"{message}; did you mean {close[0]!r}?" if close else message


def user_error_in(err: BaseException) -> UserInputError | None:
    """The :class:`UserInputError` that ``err`` was raised from, if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserInputError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None

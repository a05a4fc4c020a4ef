"""``jf eval <metric> ...``: score generated images (or answers) after training.

Each metric is a module of its own with ``main(argv)`` (``eval_fid.py``, ``eval_clip.py``,
``eval_geneval.py``, ``eval_und.py``); adding one is that module and one line in :data:`SUBCOMMANDS`.
A module imports only when its metric is asked for. FID and CLIP score print their results as JSON,
write them to ``--out`` and log them into an MLflow run when asked (``results.py``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable


def _fid(argv: list[str]) -> None:
    from jf_lightning.commands.eval_fid import main

    main(argv)


def _clip(argv: list[str]) -> None:
    from jf_lightning.commands.eval_clip import main

    main(argv)


def _geneval(argv: list[str]) -> None:
    from jf_lightning.commands.eval_geneval import main

    main(argv)


def _und(argv: list[str]) -> None:
    from jf_lightning.commands.eval_und import main

    main(argv)


# name -> runner of ``jf eval <name> <argv...>``, with its help line
SUBCOMMANDS: dict[str, tuple[Callable[[list[str]], None], str]] = {
    "fid": (_fid, "FID of a folder of images against real images or a statistics file (clean-fid)"),
    "clip": (_clip, "CLIP score of a folder of images with their prompts (torchmetrics, CLIP ViT-L/14)"),
    "geneval": (_geneval, "GenEval of a GenEval-layout folder (Mask2Former, CLIP colours, GenEval's rules)"),
    "und": (_und, "an understanding benchmark in LLaVA shards under its answer rules"),
}


def usage() -> str:
    lines = ["usage: jf eval {" + ",".join(SUBCOMMANDS) + "} ...", "", "metrics:"]
    lines += [f"  {name:<9} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines.append("\n`jf eval <metric> --help` for its options")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    entry = SUBCOMMANDS.get(argv[0])
    if entry is None:
        print(f"{usage()}\njf eval: error: unknown metric {argv[0]!r}", file=sys.stderr)
        sys.exit(2)
    entry[0](argv[1:])

"""``jf generate``: prompts -> PNG images with a trained model, in the folder layout each benchmark reads.

    python -m jf_lightning generate --ckpt run/last.ckpt --prompts geneval --out out/geneval --n 4
    torchrun --nproc-per-node 8 -m jf_lightning generate --ckpt ... --prompts meta_data.json --out out/mjhq

Prompt files and the layout they give (``N`` = ``--n`` images per prompt, ``k`` < N):

- GenEval metadata (a JSONL whose lines have ``tag`` and ``include``; ``geneval`` names the 553 prompts
  shipped with the package): ``<out>/<00000>/metadata.jsonl`` and ``<out>/<00000>/samples/<0000>.png``,
  GenEval's own layout, so GenEval's scripts and ``jf eval geneval`` score the same folder;
- MJHQ-30K's ``meta_data.json`` (``{id: {prompt, category}}``): ``<out>/<category>/<id>.png`` (``<id>_<k>``
  for k > 0), MJHQ's own layout;
- any other JSONL (a ``prompt``, ``caption`` or ``text`` per line) or a text file (a prompt per line):
  ``<out>/<00000>.png`` (``<00000>_<k>`` for k > 0) and ``<out>/prompts.jsonl`` mapping files to prompts.

Image ``j`` of the whole list (prompt ``i``'s ``k``-th is ``j = i * N + k``) is drawn with noise seed
``--seed + j``, so the images depend on neither the number of processes nor the batch size. Launched by
``torchrun`` (``RANK`` / ``WORLD_SIZE``), each process draws every ``WORLD_SIZE``-th image.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from jf_lightning.commands.model_source import Launch, add_model_arguments, load_for_inference, precision
from jf_lightning.inputs import UserInputError

GENEVAL = "geneval"


@dataclass(frozen=True)
class Job:
    """One image to draw: its path under the output folder, its prompt and its noise seed."""

    path: str
    prompt: str
    seed: int


@dataclass
class PromptList:
    """The images a prompt file asks for, and the side files its layout needs (path -> text)."""

    jobs: list[Job]
    files: dict[str, str]


def _jsonl(path: Path) -> list[dict]:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserInputError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
    return rows


def _prompt_of(row: object, where: str) -> str:
    if isinstance(row, str):
        return row
    for key in ("prompt", "caption", "text"):
        if isinstance(row, dict) and isinstance(row.get(key), str):
            return row[key]
    raise UserInputError(f"{where}: no prompt (give a 'prompt', 'caption' or 'text' string)")


def read_prompts(source: str, n: int, seed: int, limit: int | None = None) -> PromptList:
    """The jobs and side files of a prompt file (see the module docstring for the formats)."""
    if source == GENEVAL:
        from jf_lightning.metrics.geneval import GENEVAL_METADATA

        path = GENEVAL_METADATA
    else:
        path = Path(source)
        if not path.is_file():
            raise UserInputError(
                f"--prompts {source}: no such file (or `{GENEVAL}` for GenEval's 553 prompts)"
            )
    jobs, files = [], {}

    def add(i: int, prompt: str, name) -> None:
        for k in range(n):
            jobs.append(Job(name(k), prompt, seed + i * n + k))

    if path.suffix == ".json":  # MJHQ-30K's meta_data.json
        meta = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise UserInputError(f"{path}: expected MJHQ's {{id: {{prompt, category}}}} object")
        for i, (key, row) in enumerate(list(meta.items())[:limit]):
            category = row.get("category", "") if isinstance(row, dict) else ""
            add(
                i,
                _prompt_of(row, f"{path} [{key}]"),
                lambda k, c=category, key=key: f"{c}/{key}{_nth(k)}.png".lstrip("/"),
            )
        return PromptList(jobs, files)
    rows = _jsonl(path) if path.suffix == ".jsonl" else path.read_text(encoding="utf-8").splitlines()
    rows = [r for r in rows if not isinstance(r, str) or r.strip()][:limit]
    geneval = bool(rows) and all(isinstance(r, dict) and "tag" in r and "include" in r for r in rows)
    for i, row in enumerate(rows):
        prompt = _prompt_of(row, f"{path}: entry {i + 1}")
        if geneval:
            files[f"{i:05d}/metadata.jsonl"] = json.dumps(row) + "\n"
            add(i, prompt, lambda k, i=i: f"{i:05d}/samples/{k:04d}.png")
        else:
            add(i, prompt, lambda k, i=i: f"{i:05d}{_nth(k)}.png")
    if not geneval:
        files["prompts.jsonl"] = "".join(
            json.dumps({"file": j.path, "prompt": j.prompt}) + "\n" for j in jobs
        )
    return PromptList(jobs, files)


def _nth(k: int) -> str:
    return f"_{k}" if k else ""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jf generate", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--prompts", required=True, help=f"prompt file (.txt, .jsonl, MJHQ meta_data.json) or `{GENEVAL}`"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n", type=int, default=1, help="images per prompt (GenEval: 4)")
    parser.add_argument(
        "--cfg",
        type=float,
        default=2.0,
        help="classifier-free guidance weight (the paper: 2; ablations: 7.5)",
    )
    parser.add_argument("--no-cfg", action="store_true", help="sample the conditional branch alone")
    parser.add_argument("--steps", type=int, default=30, help="Euler steps")
    parser.add_argument("--seed", type=int, default=0, help="image j uses noise seed seed + j")
    parser.add_argument("--batch-size", type=int, default=16, help="images per sampler call")
    parser.add_argument("--temperature", type=float, default=1.0, help="scale of the initial noise")
    parser.add_argument("--limit", type=int, help="only the first this many prompts")
    parser.add_argument("--resume", action="store_true", help="skip images already in the folder")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    if args.n < 1 or args.steps < 1 or args.batch_size < 1:
        parser.error("--n, --steps and --batch-size must be >= 1")
    return args


def generate(args: argparse.Namespace) -> list[Path]:
    """Draw this process's share of the images; returns the files it wrote."""
    from tqdm import tqdm

    from jf_lightning.inference.generate import generate_images
    from jf_lightning.inference.images import to_pil
    from jf_lightning.inference.prompts import generation_prompt_ids

    launch = Launch.from_env()
    prompts = read_prompts(args.prompts, args.n, args.seed, args.limit)
    out = Path(args.out)
    if launch.rank == 0:
        for name, text in prompts.files.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text(text, encoding="utf-8")
    mine = [prompts.jobs[i] for i in launch.share(len(prompts.jobs))]
    if args.resume:
        mine = [job for job in mine if not (out / job.path).is_file()]
    loaded, templater, device = load_for_inference(args)
    if launch.rank == 0:
        print(
            f"jf generate: {len(prompts.jobs)} images from {loaded.description}, {launch.world_size} process(es)",
            file=sys.stderr,
        )
    written = []
    bar = tqdm(total=len(mine), unit="img", disable=launch.rank != 0, desc="generate")
    for start in range(0, len(mine), args.batch_size):
        batch = mine[start : start + args.batch_size]
        ids = [generation_prompt_ids(templater, job.prompt) for job in batch]
        with precision(device, args.bf16):
            images = generate_images(
                loaded.model,
                ids,
                [job.seed for job in batch],
                templater.pad,
                args.steps,
                None if args.no_cfg else args.cfg,
                args.batch_size,
                args.temperature,
            )  # (b, 3, H, W) uint8
        for job, image in zip(batch, to_pil(images), strict=True):
            path = out / job.path
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
            written.append(path)
        bar.update(len(batch))
    bar.close()
    return written


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    try:
        generate(args)
    except (UserInputError, FileNotFoundError) as err:
        sys.exit(f"jf generate: error: {err}")

"""Data pipeline throughput: the DataModule's whole training pipeline against bare webdataset decoding
of the same shards, with the same number of loader workers, in the same run.

Writes shards of 384 px JPEG understanding samples (LLaVA conversations of 2-4 turns and captions)
and generation samples (prompts of caption length), trains a byte-level BPE tokenizer of 32,000
tokens on the generated text with ``tokenizers`` (a real-sized vocabulary, built offline), then times:
- pipeline: ``JanusFlowDataModule.train_dataloader()`` at the release's shapes (384 px, 576 image
  tokens, seq_len 4096, 16 samples a batch): decode, transforms, templates, tokenization, packing;
- bare: ``webdataset.WebDataset(...).decode("pil")`` over the same shards (PIL decode to RGB, text
  decoded), nothing else.
Each is timed from its first item on (loader worker start-up excluded), best of ``--repeats``, with
``--workers`` loader processes (wall clock) and in one process (CPU time: what a worker with a core
to itself does, whatever else the machine runs). The pipeline's loader is the one a Trainer gets: it
hands over uint8 images, which the DataModule casts to floats after the copy to the device
(``on_after_batch_transfer``); that cast, timed on this CPU, is printed on its own line. Prints
samples/s per worker process for both and their ratio. Goals: >= 150 samples/s per worker, and the
pipeline at most 10% slower than bare decoding.

    python benchmarks/data_throughput.py --workers 2
"""

from __future__ import annotations

import argparse
import io
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from lightning import Trainer
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from jf_lightning.data.datamodule import JanusFlowDataModule
from jf_lightning.data.packing import normalise_pixels
from jf_lightning.data.sources import SourceConfig

WORDS = ["a", "the", "of", "and", "with", "on", "in", "at", "near", "under", "over", "red", "blue", "green", "yellow", "large", "small", "wooden", "metal", "old", "new", "person", "dog", "cat", "car", "tree", "house", "street", "table", "chair", "window", "sky", "cloud", "water", "mountain", "field", "road", "city", "standing", "sitting", "running", "holding", "looking", "wearing", "next", "behind", "front", "top", "left", "right", "bright", "dark", "photo", "picture", "image", "view", "scene", "close", "shot", "background", "light", "shadow", "colorful", "white", "black", "two", "three"]
SPECIAL = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<begin_of_image>", "<end_of_image>",
           "<image_placeholder>"]  # fmt: skip


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."


def photo(rng: random.Random) -> bytes:
    """A 384 px JPEG (384 x 384, 512 x 384 or 384 x 512) of smooth colour fields with grain, about
    the size of a photo at quality 90."""
    w, h = rng.choice([(384, 384), (512, 384), (384, 512)])
    noise = np.random.default_rng(rng.getrandbits(32))
    fields = Image.fromarray(noise.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    grain = noise.normal(0, 12, (h, w, 3))  # (H, W, 3)
    coarse = np.asarray(fields, dtype=np.float32)  # (H, W, 3)
    buf = io.BytesIO()
    Image.fromarray(np.uint8(np.clip(coarse + grain, 0, 255))).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_shards(root: Path, samples: int, per_shard: int, seed: int = 0) -> dict[str, str]:
    rng = random.Random(seed)
    patterns = {}
    for kind in ("und", "gen"):
        (root / kind).mkdir(parents=True)
        for shard in range(samples // per_shard):
            with wds.TarWriter(str(root / kind / f"{shard:06d}.tar")) as sink:
                for i in range(per_shard):
                    record = {"__key__": f"{shard:06d}{i:04d}", "jpg": photo(rng)}
                    if kind == "gen" or i % 2:
                        record["txt"] = sentence(rng, 12, 60).encode()  # a caption / prompt
                    else:
                        turns = []
                        for t in range(rng.randint(2, 4)):
                            question = ("<image>\n" if t == 0 else "") + sentence(rng, 8, 20)
                            turns += [{"from": "human", "value": question}, {"from": "gpt", "value": sentence(rng, 10, 60)}]
                        record["json"] = json.dumps({"conversations": turns}).encode()
                    sink.write(record)
        patterns[kind] = str(root / kind / "*.tar")
    return patterns


def build_tokenizer(out: Path, seed: int = 0) -> str:
    """A byte-level BPE tokenizer of 32,000 tokens trained on generated text, saved for AutoTokenizer."""
    rng = random.Random(seed)
    corpus = [sentence(rng, 5, 40) for _ in range(20000)]
    corpus += ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(200)) for _ in range(4000)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=32000, special_tokens=SPECIAL))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL[0], eos_token=SPECIAL[1], pad_token=SPECIAL[2],
                                   additional_special_tokens=SPECIAL[3:])  # fmt: skip
    fast.save_pretrained(out)
    return str(out)


def _loader_of(patterns: dict[str, str], tokenizer: str, workers: int = 0):
    """The training loader a Trainer gets (uint8 images: the float cast runs on the device)."""
    dm = JanusFlowDataModule(
        sources=[SourceConfig(patterns["und"], "und"), SourceConfig(patterns["gen"], "gen")],
        tokenizer=tokenizer, image_size=384, num_und_tokens=576, num_gen_tokens=576,
        ratio_schedule=[(0, (1, 1, 0))], batch_size=16, seq_len=4096, num_workers=workers,
    )  # fmt: skip
    dm.trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    dm.setup("fit")
    return dm.train_dataloader()


def pipeline_rate(patterns: dict[str, str], tokenizer: str, workers: int, samples: int) -> float:
    return timed(_loader_of(patterns, tokenizer, workers), samples, lambda batch: len(batch.sample_keys))


def cast_ms_per_sample(patterns: dict[str, str], tokenizer: str, batches: int = 8) -> float:
    """CPU milliseconds a sample's images take to cast to [-1, 1] floats (``normalise_pixels``): the
    work ``on_after_batch_transfer`` does on the device under a Trainer."""
    loader = iter(_loader_of(patterns, tokenizer))
    spent, samples = 0.0, 0
    for _ in range(batches):
        batch = next(loader)
        start = time.process_time()
        normalise_pixels(batch)
        spent += time.process_time() - start
        samples += len(batch.sample_keys)
    return 1e3 * spent / samples


def bare_rate(patterns: dict[str, str], workers: int, samples: int) -> float:
    from torch.utils.data import DataLoader

    urls = sorted(Path(patterns["und"]).parent.glob("*.tar")) + sorted(Path(patterns["gen"]).parent.glob("*.tar"))
    dataset = wds.WebDataset([str(u) for u in urls], shardshuffle=False, empty_check=False).decode("pil").repeat()
    return timed(DataLoader(dataset, batch_size=None, num_workers=workers), samples, lambda sample: 1)


def timed(loader, samples: int, count) -> float:
    """Samples per second after the first item arrived (worker start-up excluded); with no worker
    processes, per second of this process's CPU time (what one worker with a core to itself does,
    whatever else the machine runs)."""
    clock = time.process_time if loader.num_workers == 0 else time.perf_counter
    items = iter(loader)
    next(items)
    done, start = 0, clock()
    for item in items:
        done += count(item)
        if done >= samples:
            break
    return done / (clock() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2, help="loader worker processes, both ways")
    parser.add_argument("--samples", type=int, default=640, help="samples timed per way and repeat")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a loader worker; more threads only spin against the workers
    with tempfile.TemporaryDirectory() as tmp:
        patterns = write_shards(Path(tmp) / "shards", samples=400, per_shard=100)
        tokenizer = build_tokenizer(Path(tmp) / "tokenizer")
        best = {(way, w): 0.0 for way in ("pipeline", "bare") for w in (args.workers, 0)}
        for _ in range(args.repeats):  # alternated, so that a busy moment of the machine hits both
            for workers in (args.workers, 0):
                best["bare", workers] = max(best["bare", workers], bare_rate(patterns, workers, args.samples))
                pipeline = pipeline_rate(patterns, tokenizer, workers, args.samples)
                best["pipeline", workers] = max(best["pipeline", workers], pipeline)
        cast = cast_ms_per_sample(patterns, tokenizer)
    for workers in (args.workers, 0):
        how = f"wall clock, {workers} worker processes" if workers else "CPU time of one process, no workers"
        print(f"{how}:")
        for way in ("pipeline", "bare"):
            value = best[way, workers]
            print(f"  {way:9s} {value / max(1, workers):7.1f} samples/s per worker ({value:.1f} in all)")
        ratio = best["pipeline", workers] / best["bare", workers]
        print(f"  pipeline / bare decoding: {ratio:.3f} (goal >= 0.90); per worker goal >= 150")
    print(f"float cast of a sample's images on this CPU (on the device under a Trainer): {cast:.2f} ms")


if __name__ == "__main__":
    main()

"""Write the synthetic shapes world as WebDataset shards (see data/README.md).

python data/make_shapes_world.py --out data/shapes --seed 0 --train-samples 20000 --val-samples 500
"""

from __future__ import annotations

import argparse
import time

from jf_lightning.shapes.shards import write_shapes_world


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="output directory: new, empty, or a previous run's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-samples", type=int, default=10_000, help="training samples of each kind")
    parser.add_argument("--val-samples", type=int, default=500, help="validation samples of each kind")
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels (>= 32)")
    parser.add_argument("--samples-per-shard", type=int, default=5_000)
    parser.add_argument(
        "--questions-per-image", type=int, default=1, help="turns of each understanding conversation"
    )
    parser.add_argument(
        "--image-after-question", type=float, default=0.0,
        help="share of understanding samples that put the image after the question (0: always before)",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        manifest = write_shapes_world(
            args.out,
            seed=args.seed,
            train_samples=args.train_samples,
            val_samples=args.val_samples,
            image_size=args.image_size,
            samples_per_shard=args.samples_per_shard,
            questions_per_image=args.questions_per_image,
            image_after_question=args.image_after_question,
        )
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    n_shards = sum(len(paths) for splits in manifest["shards"].values() for paths in splits.values())
    print(
        f"{args.out}: {n_shards} shards, {manifest['counts']['und']} samples per kind (und, gen, text), "
        f"vocab {manifest['vocab_size']}, {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()

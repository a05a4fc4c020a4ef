"""Generation as the released JanusFlow loop runs it against our prompt-cached sampler, at the real
sequence shape with a narrowed model, on the same weights and noise.

    python -m benchmarks.sampler [--prompt-tokens 256] [--steps 30] [--layers 4] [--width 256]

The released loop (deepseek-ai/Janus, ``demo/app_janusflow.py``, ``generate``) runs the whole sequence,
[prompt, time token, 576 latent tokens] for the conditional and unconditional rows, through the LLM at
every Euler step: its KV cache is built from an empty list and never used. Here that baseline is our
model's full forward on the same sequence (``full_velocity``, the sampler's ``use_cache=False`` path:
one packed row per image, the training convention), against ``cached_velocity`` (``use_cache=True``),
which runs the prompt once into a cache and then only the time and latent tokens per step. The two
Euler loops run step by step in turn, so that other load on the machine falls on both alike. Shapes are JanusFlow-1.3B's at 384 px (a 48 x 48 x 4
latent in 2 x 2 patches: 576 tokens), 30 steps, CFG; the LLM and the codec are narrowed so that it runs
on a laptop CPU. The two outputs must agree (allclose); the script prints both times and the ratio.

The default LLM (2 blocks of width 1024) keeps a step's cost in its matrix products, as in the 1.3B
model (24 blocks of 2048), where the saving approaches the token ratio (here 833 / 577 = 1.44). A
narrower one (``--layers 4 --width 256``) spends its step in per-token elementwise work and the
generation codec, which both paths pay alike, and shows a smaller ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from jf_lightning.flow.sampler import PromptBatch, cached_velocity, full_velocity, initial_noise
from jf_lightning.models.config import resolve_config
from jf_lightning.models.janusflow import JanusFlow


def narrowed_model(layers: int, width: int) -> JanusFlow:
    """JanusFlow-1.3B's sequence geometry (384 px, 576 latent tokens) with a small LLM and codec; random
    weights, frozen and in eval mode as the EMA copy that samples."""
    cfg = resolve_config("janusflow-1.3b", None, {
        "llm.hidden_size": width, "llm.intermediate_size": 2 * width, "llm.num_layers": layers,
        "llm.num_heads": 4, "llm.num_kv_heads": 4, "llm.vocab_size": 1024,
        "siglip.source": None, "siglip.depth": 1, "siglip.width": 64, "siglip.num_heads": 2,
        "vae.source": None, "vae.block_out_channels": [32, 32, 32, 32], "vae.layers_per_block": 1,
        "gen_codec.width": 64, "repa.hidden_size": 64, "repa.layer": 1,
    })  # fmt: skip
    torch.manual_seed(0)
    model = JanusFlow(cfg).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def interleaved(model: JanusFlow, prompts: list[list[int]], steps: int, cfg: float) -> tuple[dict, dict]:
    """Both samplers' Euler loops, step by step in turn (the one that goes first alternates), so that a
    busy machine slows both alike: {path: final latents}, {path: seconds}. The cached path's time
    includes its prefill; the CFG combination is :func:`euler_sample`'s."""
    batch = PromptBatch.guided(prompts, 0, cfg=True)
    shape = (model.cfg.vae.latent_channels, model.cfg.latent_size, model.cfg.latent_size)
    noise = initial_noise(list(range(len(prompts))), shape)
    start = time.perf_counter()
    velocity = {"cached": cached_velocity(model, batch)}  # the prompt runs once, here
    seconds = {"cached": time.perf_counter() - start, "full": 0.0}
    velocity["full"] = full_velocity(model, batch, 0)
    z = {"full": noise.clone(), "cached": noise.clone()}
    for i in range(steps):
        t = torch.full((2 * len(prompts),), i / steps)
        for path in ("full", "cached") if i % 2 == 0 else ("cached", "full"):
            tic = time.perf_counter()
            v_cond, v_uncond = velocity[path](torch.cat([z[path], z[path]]), t).chunk(2)
            seconds[path] += time.perf_counter() - tic
            z[path] = z[path] + (cfg * v_cond + (1 - cfg) * v_uncond).float() / steps
    return z, seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompt-tokens", type=int, default=256, help="prompt length (BOS included)")
    parser.add_argument(
        "--images", type=int, default=1, help="images per sampler call (CFG doubles the rows)"
    )
    parser.add_argument("--steps", type=int, default=30, help="Euler steps")
    parser.add_argument("--layers", type=int, default=2, help="LLM blocks of the narrowed model")
    parser.add_argument("--width", type=int, default=1024, help="LLM width of the narrowed model")
    args = parser.parse_args()
    model = narrowed_model(args.layers, args.width)
    g = torch.Generator().manual_seed(0)
    prompts = [
        [1] + torch.randint(5, 1024, (args.prompt_tokens - 1,), generator=g).tolist()
        for _ in range(args.images)
    ]
    with torch.no_grad():
        interleaved(model, prompts, 1, 2.0)  # warm-up of both paths
        z, seconds = interleaved(model, prompts, args.steps, 2.0)
    t_full, t_cached = seconds["full"], seconds["cached"]
    diff = (z["full"] - z["cached"]).abs().max().item()
    torch.testing.assert_close(z["cached"], z["full"], rtol=1e-4, atol=1e-4)
    tokens = args.prompt_tokens + 1 + model.cfg.num_gen_tokens
    print(
        f"threads={torch.get_num_threads()}: {args.images} image(s), prompt {args.prompt_tokens} tokens + 1 time + "
        f"{model.cfg.num_gen_tokens} latent tokens = {tokens}, {args.steps} Euler steps, CFG 2.0, "
        f"LLM {args.layers} x {args.width}"
    )
    print(f"released loop (whole sequence every step): {t_full:8.2f} s")
    print(f"prompt-cached sampler:                     {t_cached:8.2f} s")
    print(
        f"speed ratio released / cached: {t_full / t_cached:.2f}x   outputs allclose (max |diff| {diff:.1e})"
    )


if __name__ == "__main__":
    main()

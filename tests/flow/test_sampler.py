import pytest
import torch

from jf_lightning.flow.sampler import (
    Autoguide,
    PromptBatch,
    euler_sample,
    generate_latents,
    generation_batch,
    initial_noise,
)
from jf_lightning.inference.generate import generate_images, generate_trajectories
from jf_lightning.models.config import tiny
from jf_lightning.models.janusflow import JanusFlow

PAD = 3
PROMPTS = [[1, 40, 41, 42, 43], [1, 50, 51]]  # different lengths: exercises left padding


def _model(gen_attention: str = "causal"):
    torch.manual_seed(0)
    cfg = tiny()
    cfg.gen_attention = gen_attention
    return JanusFlow(cfg).eval()


@pytest.mark.parametrize("gen_attention", ["causal", "bidirectional"])
def test_cached_sampler_equals_uncached(gen_attention):
    model = _model(gen_attention)
    cached = generate_latents(model, PROMPTS, [0, 1], PAD, steps=4, cfg_weight=3.0, use_cache=True)
    full = generate_latents(model, PROMPTS, [0, 1], PAD, steps=4, cfg_weight=3.0, use_cache=False)
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=1e-4)


def test_cfg_weight_one_equals_conditional_branch_alone():
    model = _model()
    guided = generate_latents(model, PROMPTS, [0, 1], PAD, steps=3, cfg_weight=1.0)
    conditional = generate_latents(model, PROMPTS, [0, 1], PAD, steps=3, cfg_weight=None)
    torch.testing.assert_close(guided, conditional, atol=1e-5, rtol=1e-5)
    stronger = generate_latents(model, PROMPTS, [0, 1], PAD, steps=3, cfg_weight=5.0)
    assert not torch.allclose(stronger, conditional, atol=1e-3)


def test_image_does_not_depend_on_batch_neighbours():
    model = _model()
    pair = generate_latents(model, PROMPTS, [0, 1], PAD, steps=2, cfg_weight=2.0)
    alone = generate_latents(model, PROMPTS[1:], [1], PAD, steps=2, cfg_weight=2.0)
    torch.testing.assert_close(pair[1:], alone, atol=1e-4, rtol=1e-4)


def test_seeded_noise_is_the_documented_cpu_generator_stream():
    noise = initial_noise([7], (4, 2, 2))
    expected = torch.randn((4, 2, 2), generator=torch.Generator("cpu").manual_seed(7))
    assert noise.dtype == torch.float32
    assert torch.equal(noise[0], expected)


def test_unconditional_prompt_keeps_bos_and_masks_the_rest():
    batch = PromptBatch.guided([[1, 40, 41]], pad_id=PAD, cfg=True)
    assert batch.input_ids.tolist() == [[1, 40, 41], [1, PAD, PAD]]
    assert batch.key_mask.tolist() == [[True, True, True], [True, False, False]]


def test_euler_integrates_a_constant_velocity_exactly():
    x = torch.randn(2, 3)
    noise = torch.randn(2, 3)
    out = euler_sample(lambda z, t: x - noise, noise, steps=7, cfg_weight=None)
    torch.testing.assert_close(out, x)



def test_step_hook_sees_the_clean_latent_the_velocity_points_at():
    """On a straight path every step's prediction z + (1 - t) v is the data itself."""
    x, noise = torch.randn(2, 3), torch.randn(2, 3)
    seen = []
    euler_sample(lambda z, t: x - noise, noise, steps=5, cfg_weight=None, on_step=lambda i, x_hat: seen.append((i, x_hat)))
    assert [i for i, _ in seen] == list(range(5))
    for _, x_hat in seen:
        torch.testing.assert_close(x_hat, x)


def test_trajectory_ends_in_the_generated_image_and_starts_elsewhere():
    model = _model()
    images = generate_images(model, PROMPTS, [0, 1], PAD, steps=4, cfg_weight=3.0, batch_size=2)
    paths = generate_trajectories(model, PROMPTS, [0, 1], PAD, steps=4, cfg_weight=3.0, batch_size=1, columns=3)
    assert paths.shape == (2, 3, *images.shape[1:]) and paths.dtype == torch.uint8
    torch.testing.assert_close(paths[:, -1], images, atol=1, rtol=0)  # batching: float noise, same pixels
    assert not torch.equal(paths[:, 0], paths[:, -1])
    with pytest.raises(ValueError, match="columns=6"):
        generate_trajectories(model, PROMPTS, [0, 1], PAD, steps=4, cfg_weight=3.0, batch_size=1, columns=6)


def test_bidirectional_slot_attention_changes_only_what_the_slot_tokens_see():
    """Same weights, both masks, one packed generation row: the prompt cannot see the image either
    way; the first latent token sees the rest of the image only when bidirectional."""
    model = _model()
    packed = generation_batch(PromptBatch.build(PROMPTS[:1], PAD), model.cfg.num_gen_tokens, PAD)
    z, t = initial_noise([0], (12, 16, 16)), torch.full((1,), 0.3)
    logits = {}
    for mode in ("causal", "bidirectional"):
        model.cfg.gen_attention = mode
        logits[mode] = model(packed, noisy_latents=z, t=t, return_logits=True).logits[0]  # (L, V)
    start = len(PROMPTS[0])  # the time token
    causal, bidirectional = logits["causal"], logits["bidirectional"]
    torch.testing.assert_close(causal[:start], bidirectional[:start])
    assert not torch.allclose(causal[start + 1], bidirectional[start + 1], atol=1e-4)


def test_autoguidance_adds_its_weighted_difference_to_the_guided_velocity():
    cond, uncond, guide = 1.0, -2.0, 0.5
    velocity = lambda z, t: torch.cat([torch.full_like(z[:1], cond), torch.full_like(z[:1], uncond)])
    out = euler_sample(velocity, torch.zeros(1, 2), steps=1, cfg_weight=3.0,
                       guide_velocity=lambda z, t: torch.full_like(z, guide), guide_weight=2.0)  # fmt: skip
    assert torch.allclose(out, torch.full((1, 2), 3.0 * cond - 2.0 * uncond + 2.0 * (cond - guide)))


def test_a_guide_identical_to_the_model_changes_nothing_and_another_one_does():
    model = _model()
    plain = generate_latents(model, PROMPTS, [0, 1], PAD, steps=3, cfg_weight=2.0)
    same = generate_latents(model, PROMPTS, [0, 1], PAD, steps=3, cfg_weight=2.0, autoguide=Autoguide(model, 2.0))
    torch.testing.assert_close(same, plain, atol=1e-5, rtol=1e-5)
    torch.manual_seed(1)
    other = JanusFlow(tiny()).eval()
    guided = generate_latents(model, PROMPTS, [0, 1], PAD, steps=3, cfg_weight=2.0, autoguide=Autoguide(other, 2.0))
    assert not torch.allclose(guided, plain, atol=1e-3)


def test_temperature_scales_the_initial_noise():
    torch.testing.assert_close(initial_noise([3, 4], (4, 2, 2), temperature=0.5), 0.5 * initial_noise([3, 4], (4, 2, 2)))

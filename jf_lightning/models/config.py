"""Typed configuration of a JanusFlow model, with the presets the project ships.

Every field carries a docstring: jsonargparse shows it in ``--help`` of the CLI. A ``source`` field
takes a hub id or a local directory; ``None`` builds the part from the fields beside it with random
init (the only way the tiny preset and the tests build anything: no downloads).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Literal

UndEncoderKind = Literal["siglip", "shared_gen", "vae_convnext", "none"]
RepaTarget = Literal["und_encoder", "siglip"]
Ablation = Literal["A", "B", "C", "D", "E", "F"]


@dataclass
class LLMConfig:
    """A Llama-family causal LM (transformers)."""

    source: str | None = None
    """Hub id or local directory for ``AutoModelForCausalLM.from_pretrained``; None = random init."""
    vocab_size: int = 102400
    """Vocabulary size (ignored when ``source`` is set)."""
    hidden_size: int = 2048
    """Width of the residual stream; every aligner maps to or from it."""
    intermediate_size: int = 5632
    """MLP width of each block."""
    num_layers: int = 24
    """Number of transformer blocks."""
    num_heads: int = 16
    """Attention heads."""
    num_kv_heads: int = 16
    """Key/value heads (grouped-query attention when smaller than ``num_heads``)."""
    max_position_embeddings: int = 4096
    """Context length: sequences are packed to at most this many tokens."""
    rms_norm_eps: float = 1e-6
    """Epsilon of the RMSNorms (also used by the decoder aligner norm, as in the release)."""
    rope_theta: float = 10000.0
    """Rotary embedding base."""


@dataclass
class SiglipConfig:
    """A SigLIP vision transformer built through timm (understanding encoder or REPA target)."""

    timm_name: str = "vit_large_patch16_siglip_384"
    """timm architecture name (random init from it when ``source`` is None and no dims are overridden)."""
    source: str | None = None
    """Hub id (``timm/ViT-L-16-SigLIP-384``) or a local directory saved by timm; None = random init."""
    image_size: int = 384
    """Input resolution in pixels."""
    patch_size: int = 16
    """Patch size: the encoder yields (image_size / patch_size)^2 tokens."""
    width: int = 1024
    """Feature width (the REPA head's output width)."""
    depth: int = 24
    """Blocks in the built encoder."""
    num_heads: int = 16
    """Attention heads."""
    mlp_ratio: float = 4.0
    """MLP expansion."""
    select_layer: int = -1
    """Which block's output is the feature: -1 = the last block followed by the final norm (the
    release's choice); k > 0 = the raw output of block k (1-based)."""

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class VAEConfig:
    """The frozen latent codec: image in [-1, 1] <-> scaled latent."""

    kind: Literal["autoencoder_kl", "pixel_shuffle"] = "autoencoder_kl"
    """``autoencoder_kl``: diffusers AutoencoderKL (SDXL-VAE for real runs). ``pixel_shuffle``: an
    exactly invertible space-to-depth latent, for the tiny preset only (README, "Decisions the paper
    leaves open")."""
    source: str | None = "stabilityai/sdxl-vae"
    """Hub id or local directory for ``AutoencoderKL.from_pretrained``; None = random init (tests)."""
    latent_channels: int = 4
    """Channels of the latent (pixel_shuffle: 3 * factor^2)."""
    downsample_factor: int = 8
    """Pixels per latent cell along each side."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype. float16 is refused: the SDXL-VAE overflows in fp16 and decodes garbage."""
    scaling_factor: float | None = None
    """Override of the VAE config's scaling factor (pixel_shuffle: the factor itself, default 1)."""
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    """Random-init AutoencoderKL only: encoder/decoder widths, SDXL-VAE's by default (their count
    sets the downsampling: 2^(n-1))."""
    layers_per_block: int = 2
    """Random-init AutoencoderKL only: resnet layers per block (SDXL-VAE: 2)."""


@dataclass
class GenCodecConfig:
    """The generation encoder (g_enc) and decoder (g_dec): ConvNeXt blocks around the LLM."""

    width: int = 768
    """Channels of the ConvNeXt feature map (768 in the release)."""
    patch_size: int = 2
    """Patchify stride on the latent: a (h, w) latent gives (h/p)*(w/p) tokens."""
    num_blocks: int = 2
    """ConvNeXt blocks in each of the encoder and the decoder."""
    norm_eps: float = 1e-6
    """RMSNorm epsilon inside the codec."""


@dataclass
class RepaConfig:
    """REPA: align the LLM's states at the latent tokens to the understanding encoder's features."""

    enabled: bool = True
    """Off in ablation A."""
    layer: int = 6
    """LLM block whose output is projected (1-based: 6 = after the sixth block)."""
    hidden_size: int = 2048
    """Hidden width of the three-layer MLP head (the REPA paper's value; JanusFlow does not say)."""
    target: RepaTarget = "und_encoder"
    """``und_encoder``: the SigLIP that serves understanding (the final design). ``siglip``: a separate,
    always frozen SigLIP kept only as the target (ablations B and C, where understanding has no SigLIP)."""


@dataclass
class JanusFlowConfig:
    """The whole model: which parts exist and how they are sized."""

    image_size: int = 384
    """Square image resolution for both tasks."""
    llm: LLMConfig = field(default_factory=LLMConfig)
    """The language model."""
    und_encoder: UndEncoderKind = "siglip"
    """Understanding encoder: ``siglip`` (final design), ``shared_gen`` (ablation B: the generation
    encoder on the clean latent), ``vae_convnext`` (ablation C: a second VAE+ConvNeXt encoder of the same
    architecture and init), ``none`` (generation-only model, ablation E)."""
    siglip: SiglipConfig = field(default_factory=SiglipConfig)
    """SigLIP, used when ``und_encoder == 'siglip'`` or ``repa.target == 'siglip'``."""
    generation: bool = True
    """Build the generation modules and the VAE (False: understanding-only model, ablation D)."""
    vae: VAEConfig = field(default_factory=VAEConfig)
    """The frozen latent codec."""
    gen_codec: GenCodecConfig = field(default_factory=GenCodecConfig)
    """Generation encoder/decoder."""
    repa: RepaConfig = field(default_factory=RepaConfig)
    """Representation alignment."""
    gen_attention: Literal["causal", "bidirectional"] = "causal"
    """Attention among a generation slot's tokens (time token + latents): ``causal``, the paper's
    ("causal attention suffices"), or ``bidirectional``, every latent token sees the whole image (the
    alternative masking the paper tried and found no better at 1.3B)."""

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae.downsample_factor

    @property
    def gen_grid(self) -> int:
        return self.latent_size // self.gen_codec.patch_size

    @property
    def num_gen_tokens(self) -> int:
        """Latent tokens per generated image (576 at 384 px)."""
        return self.gen_grid**2

    @property
    def num_und_tokens(self) -> int:
        """Feature tokens per understanding image (576 for SigLIP-L/16 at 384 px)."""
        if self.und_encoder == "siglip":
            return self.siglip.num_tokens
        if self.und_encoder in ("shared_gen", "vae_convnext"):
            return self.num_gen_tokens
        return 0

    @property
    def has_understanding(self) -> bool:
        return self.und_encoder != "none"

    @property
    def needs_siglip(self) -> bool:
        uses_target = self.generation and self.repa.enabled and self.repa.target == "siglip"
        return self.und_encoder == "siglip" or uses_target

    def validate(self) -> None:
        """Refuse inconsistent configurations with one line naming the field and the fix."""
        if self.gen_attention not in ("causal", "bidirectional"):
            raise ValueError(f"gen_attention={self.gen_attention!r} must be 'causal' or 'bidirectional'")
        if self.vae.dtype == "float16":
            raise ValueError("vae.dtype=float16 is refused: the SDXL-VAE decodes garbage in fp16; use float32 or bfloat16")
        if self.image_size % (self.vae.downsample_factor * self.gen_codec.patch_size):
            raise ValueError(
                f"image_size={self.image_size} must be divisible by vae.downsample_factor * gen_codec.patch_size"
            )
        if self.needs_siglip and self.siglip.image_size != self.image_size:
            raise ValueError(f"siglip.image_size={self.siglip.image_size} must equal image_size={self.image_size}")
        if not (self.generation or self.has_understanding):
            raise ValueError("the model has neither understanding nor generation: set generation=true or und_encoder")
        if self.und_encoder in ("shared_gen", "vae_convnext") and not self.generation:
            raise ValueError(f"und_encoder={self.und_encoder} needs the VAE and codec: set generation=true")
        if self.generation and self.repa.enabled:
            # transformers reports the last block's output after the final norm, so the last block
            # cannot serve as a REPA layer (and aligning the output layer defeats REPA's purpose).
            if not 1 <= self.repa.layer < self.llm.num_layers:
                raise ValueError(f"repa.layer={self.repa.layer} must be within 1..llm.num_layers-1={self.llm.num_layers - 1}")
            if self.repa.target == "und_encoder" and self.und_encoder != "siglip":
                raise ValueError(
                    f"repa.target=und_encoder needs und_encoder=siglip (got {self.und_encoder}): "
                    "use repa.target=siglip for a frozen SigLIP kept only as the REPA target"
                )
            if self.siglip.num_tokens != self.num_gen_tokens:
                raise ValueError(
                    f"REPA aligns token to token: SigLIP gives {self.siglip.num_tokens} tokens but the latent "
                    f"grid gives {self.num_gen_tokens}; match siglip.patch_size to the latent grid"
                )


def janusflow_1_3b() -> JanusFlowConfig:
    """The released model: 384 px, DeepSeek-LLM 1.3B, SigLIP-L/16-384, SDXL-VAE (4x48x48 latent)."""
    return JanusFlowConfig()


def ablation_256() -> JanusFlowConfig:
    """Table 6's setting: 256 px, SigLIP-L/16-256 (16x16 tokens), 4x32x32 latent (16x16 grid)."""
    cfg = JanusFlowConfig(image_size=256)
    cfg.siglip = SiglipConfig(timm_name="vit_large_patch16_siglip_256", image_size=256)
    return cfg


def tiny() -> JanusFlowConfig:
    """Tests and the embedded default: 32 px, a 4-block LLM of width 128, a 2-block SigLIP-layout ViT,
    and the exactly invertible pixel-shuffle latent (3*2*2 = 12 x 16 x 16; 8x8 = 64 image tokens).
    A 4x pixel shuffle (48 x 8 x 8, 16 tokens) runs faster, but after equally short runs its samples
    were per-pixel noise where the 2x latent's were coloured blobs (one run each, not a controlled
    comparison): with 4x, one 1x1 conv has to paint a whole 8x8 pixel patch."""
    return JanusFlowConfig(
        image_size=32,
        llm=LLMConfig(
            vocab_size=512,
            hidden_size=128,
            intermediate_size=384,
            num_layers=4,
            num_heads=4,
            num_kv_heads=4,
            max_position_embeddings=512,
        ),
        siglip=SiglipConfig(
            timm_name="vit_base_patch16_siglip_gap_224",
            image_size=32,
            patch_size=4,
            width=96,
            depth=2,
            num_heads=4,
        ),
        vae=VAEConfig(kind="pixel_shuffle", source=None, latent_channels=12, downsample_factor=2),
        gen_codec=GenCodecConfig(width=128, patch_size=2, num_blocks=2),
        repa=RepaConfig(layer=2, hidden_size=256),
    )


PRESETS = {"janusflow-1.3b": janusflow_1_3b, "ablation-256": ablation_256, "tiny": tiny}


def preset(name: str) -> JanusFlowConfig:
    """A fresh copy of a named preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}: choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


def with_ablation(cfg: JanusFlowConfig, ablation: Ablation) -> JanusFlowConfig:
    """Table 6 variant of ``cfg`` (a copy). In B and C no SigLIP serves understanding; REPA aligns to a
    frozen SigLIP kept only as its target (the paper leaves this open; this is the natural reading)."""
    cfg = copy.deepcopy(cfg)
    if ablation == "A":
        cfg.repa.enabled = False
    elif ablation in ("B", "C"):
        cfg.und_encoder = "shared_gen" if ablation == "B" else "vae_convnext"
        cfg.repa.target = "siglip"
    elif ablation == "D":
        cfg.generation = False
    elif ablation == "E":
        cfg.und_encoder = "none"
        cfg.repa.target = "siglip"
    elif ablation != "F":
        raise ValueError(f"unknown ablation {ablation!r}: choose one of A B C D E F")
    return cfg


def _leaf_keys(obj: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys += _leaf_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def apply_overrides(cfg: JanusFlowConfig, overrides: dict[str, Any] | None) -> JanusFlowConfig:
    """Set dotted keys (``{"llm.source": "...", "repa.layer": 8}``) on a copy of ``cfg``."""
    cfg = dataclasses.replace(cfg)  # the top level; nested parts are replaced below as they change
    valid = _leaf_keys(cfg)
    for key, value in (overrides or {}).items():
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"unknown model override {key!r}: {hint}valid keys are {', '.join(valid)}")
        *path, leaf = key.split(".")
        parent = cfg
        for name in path:  # copy each nested dataclass on the way so the preset object stays untouched
            child = dataclasses.replace(getattr(parent, name))
            setattr(parent, name, child)
            parent = child
        if isinstance(getattr(parent, leaf), tuple) and isinstance(value, list):
            value = tuple(value)  # YAML has no tuples
        setattr(parent, leaf, value)
    return cfg


def resolve_config(
    preset_name: str = "tiny", ablation: str | None = None, overrides: dict | None = None
) -> JanusFlowConfig:
    """Preset, then the Table 6 ablation, then the user's dotted overrides; validated."""
    cfg = preset(preset_name)
    if ablation is not None:
        cfg = with_ablation(cfg, ablation)
    cfg = apply_overrides(cfg, overrides)
    cfg.validate()
    return cfg


def config_from_hparams(hparams: dict[str, Any]) -> JanusFlowConfig:
    """The model configuration a stage saved in its checkpoint's ``hyper_parameters``: the typed
    ``config`` when present (as a dataclass or its dict form), else ``preset`` / ``ablation`` /
    ``overrides`` (checkpoints of stages that took only those)."""
    config = hparams.get("config")
    if isinstance(config, JanusFlowConfig):
        return config
    if isinstance(config, dict):
        return config_from_dict(config)
    return resolve_config(hparams.get("preset", "tiny"), hparams.get("ablation"), hparams.get("overrides"))


def config_from_dict(tree: dict[str, Any]) -> JanusFlowConfig:
    """``dataclasses.asdict`` inverse: nested dicts -> the nested config dataclasses; unknown keys are
    refused with the nearest valid one."""
    flat = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[prefix + key] = value

    walk(tree, "")
    cfg = apply_overrides(JanusFlowConfig(), flat)
    cfg.validate()
    return cfg


def config_for(preset_name: str, ablation: str | None, config: JanusFlowConfig | dict | None) -> JanusFlowConfig:
    """A stage's model configuration: ``config`` validated (a dict: as a checkpoint's hyperparameters
    hold it), or, without one, the preset with the ablation applied."""
    if config is None:
        return resolve_config(preset_name, ablation)
    if isinstance(config, dict):
        return config_from_dict(config)
    config.validate()
    return config


def config_keys() -> list[str]:
    """Every dotted key of the model config: its groups (``llm``) and their fields (``llm.num_layers``)."""
    leaves = _leaf_keys(JanusFlowConfig())
    groups = {key.rsplit(".", 1)[0] for key in leaves if "." in key}
    return sorted(groups) + leaves

"""Tiny Stable-Diffusion-v1-style components for the toy concept world.

Same module classes as SD v1.4 (``AutoencoderKL``, ``UNet2DConditionModel`` with
``CrossAttnDownBlock2D``/``UNetMidBlock2DCrossAttn``/``CrossAttnUpBlock2D``,
``CLIPTextModel``, ``CLIPTokenizer``, ``DDIMScheduler``), only much narrower, so
that erasure methods written against SD module names (``attn2.to_k`` ...) run
unchanged on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionPipeline,
                       UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .data import IMAGE_SIZE

LATENT_CHANNELS = 4
VAE_DOWNSAMPLE = 4  # 2 ** (len(block_out_channels) - 1)
LATENT_SIZE = IMAGE_SIZE // VAE_DOWNSAMPLE
TEXT_HIDDEN = 128

VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    latent_channels=LATENT_CHANNELS,
    norm_num_groups=16,
    sample_size=IMAGE_SIZE,
)

UNET_CONFIG: dict[str, Any] = dict(
    sample_size=LATENT_SIZE,
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(64, 96, 128),
    layers_per_block=1,
    cross_attention_dim=TEXT_HIDDEN,
    attention_head_dim=4,  # SD v1 semantics: this is the number of heads
    norm_num_groups=32,
)

# SD v1.4's scheduler settings, verbatim.
SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    set_alpha_to_one=False,
    steps_offset=1,
    clip_sample=False,
    prediction_type="epsilon",
)


def text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    """Small CLIP text transformer config matched to ``tokenizer``."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=4 * TEXT_HIDDEN,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=TEXT_HIDDEN,
    )


def build_vae() -> AutoencoderKL:
    """Fresh (random) VAE; ``scaling_factor`` is set after training."""
    return AutoencoderKL(**VAE_CONFIG)


def build_unet() -> UNet2DConditionModel:
    """Fresh (random) conditional UNet."""
    return UNet2DConditionModel(**UNET_CONFIG)


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """Fresh (random) CLIP text encoder."""
    return CLIPTextModel(text_config(tokenizer))


def build_scheduler() -> DDIMScheduler:
    """DDIM scheduler with SD v1.4's noise schedule."""
    return DDIMScheduler(**SCHEDULER_CONFIG)


def assemble_pipeline(vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                      unet: UNet2DConditionModel) -> StableDiffusionPipeline:
    """Wrap trained components in a ``StableDiffusionPipeline`` (no safety checker)."""
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=build_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def count_params(module: Any) -> int:
    """Number of parameters of a ``torch.nn.Module``."""
    return sum(p.numel() for p in module.parameters())


def dir_size_mb(path: str | Path, suffix: str = ".safetensors") -> float:
    """Total size in MB of files with ``suffix`` under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob(f"*{suffix}")) / 1e6

"""Load the text-to-image pipeline a run uses, from a ``conf/model/*.yaml`` node.

Sources:
    ``tiny``: a tiny random Stable Diffusion pipeline built from config in code (CPU, seconds; tests).
    ``sd14_random``: the SD v1.4 architecture (UNet, VAE, CLIP ViT-L/14 text tower) with random weights,
        for speed and memory checks without downloads.
    ``toy``: the trained toy-world pipeline shipped inside the package.
    ``pretrained``: a diffusers directory (``path``) or a Hugging Face hub id (``hub_id``).

Random models are seeded, so their weights, and so their image-cache fingerprint, are the same every time.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from erasebench.clip_tokenizer import byte_symbols, sd_clip_tokenizer
from erasebench.errors import ConfigError, MissingFileError, UnknownNameError, unknown_name_message

#: Sampler name -> diffusers scheduler class name.
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
}

# The SD v1 noise schedule (CompVis v1-inference.yaml: linear_start 0.00085, linear_end 0.012, scaled_linear).
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``"auto"`` -> float16 on CUDA, float32 on CPU."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    except KeyError:
        raise ConfigError(f"model.dtype must be auto, float32, float16 or bfloat16, not '{dtype}'") from None


def build_char_tokenizer(max_length: int = 77) -> Any:
    """A CLIP tokenizer with a byte-level vocabulary and no merges (one token per character).

    It pads and truncates exactly like SD's tokenizer (``<|startoftext|>`` ... ``<|endoftext|>``, padded
    with ``<|endoftext|>`` to ``max_length``) and needs no download. Random models use it.
    """
    from transformers import CLIPTokenizer

    chars = byte_symbols()  # GPT-2/CLIP's byte symbols, in the real vocabulary's order
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        tok = CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=max_length)
    tok.pad_token = "<|endoftext|>"
    return tok


def _assemble(unet_kw: dict, vae_kw: dict, text_kw: dict, tokenizer: Any, device: torch.device) -> Any:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id, vocab_size=max(len(tokenizer), text_kw.pop("vocab_size", 0)))
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)  # fixed weights -> fixed fingerprint -> the image cache is reused across runs
        unet = UNet2DConditionModel(**unet_kw)
        vae = AutoencoderKL(**vae_kw)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_kw, **ids))
    scheduler = DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def build_tiny(device: torch.device = torch.device("cpu")) -> Any:
    """A tiny random SD pipeline (about 0.5M parameters) with SD's block types, attn1/attn2 and CFG."""
    unet = dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
                norm_num_groups=8)
    vae = dict(block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
               down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    text = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                max_position_embeddings=77, projection_dim=32)
    return _assemble(unet, vae, text, build_char_tokenizer(77), device)


def build_sd14_random(device: torch.device = torch.device("cpu"), sample_size: int = 64) -> Any:
    """The SD v1.4 architecture (CompVis v1-inference.yaml) with random weights and SD's real tokenizer.

    The tokenizer is CLIP's BPE (:func:`erasebench.clip_tokenizer.sd_clip_tokenizer`, built offline from
    open-clip-torch's vocabulary): prompts get the ids the real checkpoint gives them, so token-position rules
    meet multi-token concepts. The text tower has CLIP ViT-L/14's shape and 49408-token embedding.

    Args:
        device: Where to build it.
        sample_size: The UNet's latent size, which methods draw their training latents at: 64 (512 px) as SD;
            16 (128 px) keeps CPU checks of the full architecture within minutes.
    """
    unet = dict(sample_size=sample_size, cross_attention_dim=768, attention_head_dim=8)  # diffusers' = SD v1's
    vae = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu", vocab_size=49408)
    return _assemble(unet, vae, text, sd_clip_tokenizer(77), device)


def _load_pretrained(cfg: Mapping[str, Any], dtype: torch.dtype) -> Any:
    from diffusers import StableDiffusionPipeline
    from huggingface_hub import constants

    name, path, hub_id = cfg["name"], cfg.get("path"), cfg.get("hub_id")
    if path:
        if not Path(path).expanduser().is_dir():
            raise MissingFileError(
                f"Model '{name}': model.path='{path}' is not a directory. Point model.path at a diffusers "
                "pipeline directory (with model_index.json), or unset it to load the hub id."
            )
        source = str(Path(path).expanduser())
    elif hub_id:
        source = str(hub_id)
    else:
        raise ConfigError(f"Model '{name}' needs model.path or model.hub_id.")
    try:
        return StableDiffusionPipeline.from_pretrained(
            source, torch_dtype=dtype, revision=cfg.get("revision"), safety_checker=None,
            requires_safety_checker=False,
        )
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        raise MissingFileError(
            f"Could not load the weights of model '{name}' from '{source}' "
            f"({'offline; ' if offline else ''}Hugging Face cache: {constants.HF_HUB_CACHE}). "
            f"Fetch them on a machine with internet with `huggingface-cli download {hub_id or source}` "
            "(and copy the cache, or set HF_HOME), or pass model.path=<local diffusers directory>. "
            f"Cause: {str(exc).splitlines()[0][:300]}"
        ) from None


def _load_toy() -> Any:
    from diffusers import StableDiffusionPipeline

    from erasebench.toy import pipeline_path

    try:
        path = pipeline_path()
    except FileNotFoundError as exc:  # the toy weights ship in the package; absent only in a broken checkout
        raise MissingFileError(f"Model 'toy': {exc}") from None
    return StableDiffusionPipeline.from_pretrained(str(path), safety_checker=None, requires_safety_checker=False)


def set_scheduler(pipe: Any, name: str) -> None:
    """Swap the pipeline's scheduler for ``name`` (see :data:`SCHEDULERS`), keeping the noise schedule."""
    import diffusers

    if name not in SCHEDULERS:
        raise UnknownNameError(unknown_name_message("sampler", name, SCHEDULERS))
    pipe.scheduler = getattr(diffusers, SCHEDULERS[name]).from_config(pipe.scheduler.config)


def load_pipeline(cfg: Mapping[str, Any], device: torch.device, dtype: torch.dtype) -> Any:
    """Load the pipeline described by a model node, on ``device``, safety checker off, no progress bars.

    Raises:
        MissingFileError: Weights are absent; the message names the model, the cache and the fix.
        UnknownNameError: Unknown ``source`` or sampler.
    """
    builders = {"tiny": build_tiny, "sd14_random": build_sd14_random}
    source = cfg.get("source", "pretrained")
    if source in builders:
        size = {"sample_size": int(cfg["sample_size"])} if source == "sd14_random" and cfg.get("sample_size") else {}
        pipe = builders[source](device, **size)
    elif source == "toy":
        pipe = _load_toy()
    elif source == "pretrained":
        pipe = _load_pretrained(cfg, dtype)
    else:
        raise UnknownNameError(unknown_name_message("model source", str(source), [*builders, "toy", "pretrained"]))
    if pipe.unet.dtype != dtype:  # pretrained weights already load in `dtype`; cast only the built ones
        pipe = pipe.to(dtype=dtype)
    pipe = pipe.to(device)
    set_scheduler(pipe, str(cfg["sampler"]["scheduler"]))
    pipe.set_progress_bar_config(disable=True)  # the harness shows one bar per batch loop instead
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False).eval()  # methods re-enable gradients on what they train
    return pipe

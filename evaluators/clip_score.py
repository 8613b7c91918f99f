"""CLIP score of each split's images against their own prompts.

Protocol (``eval-protocol.md`` §5.3): torchmetrics 1.9 ``CLIPScore``: ``100 * cos(E_image, E_prompt)`` averaged
over the split (torchmetrics clamps the *mean* at 0), with Hugging Face ``transformers`` CLIP.

Backbone (``backbone``, recorded): ``openai/clip-vit-base-patch32`` by default, the model MACE, UCE and
AdvUnlearn use (``logits_per_image`` = 100 * cos); ``openai/clip-vit-large-patch14`` is torchmetrics' default
and UnlearnDiffAtk's. Scores of different backbones are not comparable. Weights come from ``model_dir`` (a
local ``save_pretrained`` folder) or from the Hugging Face cache, read with ``local_files_only`` after checking
the files are there (see :mod:`erasebench.weights`); nothing is downloaded during a run.
``backbone: random_tiny_clip_test`` builds a tiny seeded random CLIP from a ``CLIPConfig`` (tests only).

Compatibility: transformers 5 returns a ``BaseModelOutputWithPooling`` (projected embedding in
``pooler_output``) from ``get_image_features`` / ``get_text_features``, where torchmetrics 1.9 expects a tensor;
the model is wrapped in :class:`TensorFeatures`, which hands torchmetrics the tensor (no change to the math).

Deviations: AdvUnlearn divides the score by 100 (reported here on the 0-100 scale). Prompts longer than CLIP's
77 tokens are truncated by torchmetrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from erasebench.evaluators._common import batches, seeded, to_uint8

from erasebench import weights
from erasebench.api import Evaluator, MetricInfo, RunContext, Score, Task
from erasebench.errors import ConfigError, MissingFileError
from erasebench.registry import register_evaluator

RANDOM_TINY_CLIP = "random_tiny_clip_test"
BACKBONES = ("openai/clip-vit-base-patch32", "openai/clip-vit-large-patch14", RANDOM_TINY_CLIP)


def _tensor(out: Any) -> Any:
    import torch

    return out if isinstance(out, torch.Tensor) else out.pooler_output


class TensorFeatures:
    """Namespace for the adapter class (built lazily so that torch loads only when used)."""

    @staticmethod
    def wrap(model: Any) -> Any:
        """Wrap a ``CLIPModel`` so that ``get_*_features`` return the projected embeddings as tensors."""
        import torch

        class _Adapter(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model
                self.config = model.config

            def get_image_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
                return _tensor(self.model.get_image_features(*args, **kwargs))

            def get_text_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
                return _tensor(self.model.get_text_features(*args, **kwargs))

        return _Adapter().eval()


def tiny_random_clip() -> tuple[Any, Any]:
    """A tiny CLIP (seeded random weights) and a processor that needs no download: for tests only.

    The tokenizer is erasebench's byte-level CLIP tokenizer (one token per character); images are resized to
    32 px.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from erasebench.models import build_char_tokenizer

    tok = build_char_tokenizer(77)
    text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
            "num_hidden_layers": 2, "max_position_embeddings": 77, "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
              "image_size": 32, "patch_size": 8}
    model = seeded(lambda: CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)))
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model.eval(), CLIPProcessor(image_processor=image_processor, tokenizer=tok)


def clip_loader(backbone: str, model_dir: str | None) -> Callable[[], tuple[Any, Any]]:
    """A callable returning ``(CLIPModel, CLIPProcessor)`` for torchmetrics, with the files checked first.

    Raises:
        MissingFileError: ``model_dir`` is not a folder, or the backbone is not in the Hugging Face cache.
    """
    if backbone == RANDOM_TINY_CLIP:
        def tiny() -> tuple[Any, Any]:
            model, processor = tiny_random_clip()
            return TensorFeatures.wrap(model), processor

        return tiny
    if model_dir:
        source = Path(model_dir).expanduser()
        if not (source / "config.json").is_file():
            raise MissingFileError(f"clip_score: model_dir '{source}' holds no config.json. Point it at a "
                                   f"`save_pretrained` folder of {backbone}, or unset it to use the Hugging Face cache.")
    else:
        source = weights.require_hf(backbone, f"evaluator 'clip_score' (backbone {backbone})")

    def load() -> tuple[Any, Any]:
        from transformers import CLIPModel, CLIPProcessor

        model = CLIPModel.from_pretrained(str(source), local_files_only=True)
        return TensorFeatures.wrap(model), CLIPProcessor.from_pretrained(str(source), local_files_only=True)

    return load


@register_evaluator("clip_score")
class CLIPScoreEvaluator(Evaluator):
    """Mean CLIP score (0-100) between each image and its prompt, per split."""

    display_name = "CLIP score"

    @classmethod
    def describe(cls, settings: Mapping[str, Any]) -> str:
        """The CLIP backbone."""
        return f"backbone {settings['backbone']}" if settings.get("backbone") else ""

    higher_is_better = {"clip_score": True}
    # Agreement of each image with its own prompt: erase prompts name the concept, so an erased model should
    # score lower there, and keep its score on the preserve split.
    metrics = {("erase", "clip_score"): MetricInfo(False, "CLIP"), ("*", "clip_score"): MetricInfo(True, "CLIP")}
    smoke_settings = {"backbone": RANDOM_TINY_CLIP}

    @dataclass
    class Config:
        """Settings (defaults: MACE / UCE / AdvUnlearn's ViT-B/32).

        Attributes:
            backbone: ``openai/clip-vit-base-patch32``, ``openai/clip-vit-large-patch14`` or
                ``random_tiny_clip_test`` (tests only).
            model_dir: Local folder with the backbone's files; None = the Hugging Face cache.
            batch_size: Image-prompt pairs per forward pass.
        """

        backbone: str = "openai/clip-vit-base-patch32"
        model_dir: str | None = None
        batch_size: int = 32

    def __init__(self, config: Any = None) -> None:
        """Validate the backbone."""
        super().__init__(config)
        if self.config.backbone not in BACKBONES:
            raise ConfigError(f"clip_score: backbone must be one of {', '.join(BACKBONES)}, "
                              f"not '{self.config.backbone}'")

    def metric(self, device: Any) -> Any:
        """A torchmetrics ``CLIPScore`` on ``device``."""
        from torchmetrics.multimodal.clip_score import CLIPScore

        return CLIPScore(model_name_or_path=clip_loader(self.config.backbone, self.config.model_dir)).to(device)

    def score(self, metric: Any, images: list[Any], prompts: list[str], device: Any) -> float:
        """Mean CLIP score of image/prompt pairs (the metric is reset first)."""
        return self.scores(metric, images, prompts, device)[0]

    def scores(self, metric: Any, images: list[Any], prompts: list[str], device: Any) -> tuple[float, tuple[float, ...]]:
        """The CLIP score of image/prompt pairs as torchmetrics computes it (mean, floored at 0), and each
        pair's own score (100 x cosine, the per-sample values torchmetrics sums)."""
        from torchmetrics.functional.multimodal.clip_score import _clip_score_update

        each: list[float] = []
        for idx in batches(range(len(images)), self.config.batch_size):
            x = to_uint8([images[i] for i in idx]).to(device)
            score, _ = _clip_score_update(list(x), [prompts[i] for i in idx], metric.model, metric.processor)
            each += score.detach().double().cpu().reshape(-1).tolist()
        return max(sum(each) / len(each), 0.0) if each else 0.0, tuple(each)

    def evaluate(self, pipe: Any, task: Task, run: RunContext) -> dict[str, dict[str, float | Score]]:
        """CLIP score per split between ``run.generate`` images and their prompts."""
        metric = self.metric(run.device)
        out: dict[str, dict[str, float | Score]] = {}
        for split, items in task.splits.items():
            images = run.generate(pipe, items)
            value, each = self.scores(metric, images, [it.prompt for it in items], run.device)
            out[split] = {"clip_score": Score(value, len(images), each)}
        return out

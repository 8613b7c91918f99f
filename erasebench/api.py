"""The plugin API: what a method and an evaluator implement, and what the harness hands them.

A method edits a pipeline so that it no longer renders a concept; an evaluator measures a pipeline on a
task's prompt splits. Both carry a ``Config`` dataclass whose defaults are the paper's settings; the
harness validates the YAML against it, so plugins never see Hydra.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeVar

from erasebench.datafiles import DataReads

if TYPE_CHECKING:  # keep `import erasebench.api` light: torch and diffusers load only when used
    import torch
    from diffusers import DiffusionPipeline
    from PIL.Image import Image

#: The two splits every task has: prompts for the concept to erase, and prompts whose images must survive.
SPLITS: tuple[str, ...] = ("erase", "preserve")


@dataclass(frozen=True)
class NoConfig:
    """The config of a plugin without settings."""


@dataclass(frozen=True)
class PromptItem:
    """One image to generate: the prompt, its seed and the concept it shows (the classifier label).

    ``guidance`` overrides the sampler's guidance scale for this image (I2P prompts carry their own).
    """

    prompt: str
    seed: int
    label: str = ""
    guidance: float | None = None


#: Task kinds that take another kind's settings where a method has none of their own: an I2P harm category
#: ("unsafe") is erased like nudity unless the method's reference code has unsafe settings (RECE's epochs,
#: AbConcept's inappropriate-content command, TRCE's unsafe preset).
KIND_FALLBACKS: Mapping[str, str] = {"unsafe": "nudity"}

_V = TypeVar("_V")


def by_kind(table: Mapping[str, _V], kind: str, default: _V) -> _V:
    """``table[kind]``, else the entry of the kind's fallback (:data:`KIND_FALLBACKS`), else ``default``."""
    if kind in table:
        return table[kind]
    fallback = KIND_FALLBACKS.get(kind)
    return table[fallback] if fallback in table else default


@dataclass(frozen=True)
class Task:
    """What to erase and how to check it. Data, not a plugin.

    Attributes:
        name: Task key, e.g. ``"toy_object"``.
        concept: Key of the concept to erase, e.g. ``"circle"``.
        concept_text: The words a method erases, e.g. ``"circle"`` or ``"Van Gogh"``.
        kind: ``"object"``, ``"style"``, ``"nudity"``, ``"unsafe"`` (an I2P harm category), ... (methods pick
            presets by it, through :func:`by_kind`).
        concepts: Every concept of the task, key -> text; the others are the preserved ones.
        splits: Split name -> the images to generate for it.
        evaluators: Evaluator name -> its settings, run in this order.
        anchor: An optional anchor/surrogate concept text some methods use ("painting", "a person").
        anchor_prompts: Captions of the anchor concept (``{anchor}`` is filled in) for methods that train
            on anchor images.
        erase_prompt: The prompt methods erase, when the bare concept text is not how the model is asked
            for it (the toy world's frozen random text encoder knows "a circle", not "circle"); empty means
            ``concept_text``. Use :meth:`erase_text`.
    """

    name: str
    concept: str
    concept_text: str
    kind: str
    concepts: Mapping[str, str]
    splits: Mapping[str, tuple[PromptItem, ...]]
    evaluators: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    anchor: str = ""
    anchor_prompts: tuple[str, ...] = ()
    erase_prompt: str = ""

    def erase_text(self) -> str:
        """The text a method should erase: ``erase_prompt``, else ``concept_text``."""
        return self.erase_prompt or self.concept_text


class Score(NamedTuple):
    """A metric value with the number of samples behind it (for when it differs from the split size).

    Attributes:
        value: The metric.
        n: Images (or attacked prompts) behind it.
        samples: One value per image, in the split's item order, whose mean (or sum, see
            :attr:`MetricInfo.per_image`) is ``value``; the harness bootstraps its confidence interval over
            them and the report pairs them between methods. Empty for a set-level metric (FID).
        ci: A set-level metric's own interval ``(low, high)`` (FID's bootstrap over image sets), if any.
        ci_method: How ``ci`` was made, or why there is none (recorded in the row).
    """

    value: float
    n: int
    samples: tuple[float, ...] = ()
    ci: tuple[float, float] | None = None
    ci_method: str = ""


@dataclass(frozen=True)
class MetricInfo:
    """What one (split, metric) means: how to read it, show it and aggregate it.

    Attributes:
        higher_is_better: Direction on this split (erase-split FID: higher, the erased model moved away;
            preserve-split FID: lower); ``None`` = neither, no best is marked.
        display: Name in tables and figures (``ACC``, ``FID``).
        unit: ``%`` for a fraction shown in percent (the value stays a fraction), else empty.
        per_image: How per-image samples give the value: ``mean``, ``sum`` (detection counts) or empty for a
            set-level metric (FID, KID), which gets no per-image interval.
        over_seeds: How seeds combine: ``mean``.
        over_concepts: How a task's concepts combine in an average row: ``mean`` or ``sum``.
    """

    higher_is_better: bool | None
    display: str = ""
    unit: str = ""
    per_image: str = "mean"
    over_seeds: str = "mean"
    over_concepts: str = "mean"

    def aggregate(self) -> str:
        """The text written into each row's ``aggregate`` column, e.g. ``images=mean seeds=mean concepts=mean``."""
        return f"images={self.per_image or 'set'} seeds={self.over_seeds} concepts={self.over_concepts}"


@dataclass
class RunContext:
    """What the harness gives a plugin for one run.

    Attributes:
        seed: The run seed (method training randomness). Evaluation images use the task's fixed seeds.
        device: Torch device the pipeline lives on.
        dtype: Dtype of the pipeline's frozen weights.
        run_dir: This run's output directory.
        generate: ``generate(pipe, items) -> images``: seeded, batched and cached on disk, so the same
            (weights, sampler, prompt, seed) is generated once and shared by every run that needs it.
        original_images: ``original_images(items) -> images`` of the unmodified model (from the cache, or
            from a reloaded copy of the model; methods edit theirs in place).
        limit: Cap on images per split for smoke runs, or ``None``.
        cache_dir: Root of the shared cache (``paths.cache_dir``), for artefacts every run can reuse
            (trained evaluation classifiers, ...); ``None`` outside the harness.
        reads: The data files this run has read; plugins open data files through :meth:`data_path` so that
            a run is redone when one of them changes.
    """

    seed: int
    device: torch.device
    dtype: torch.dtype
    run_dir: Path
    generate: Callable[[DiffusionPipeline, Sequence[PromptItem]], list[Image]]
    original_images: Callable[[Sequence[PromptItem]], list[Image]]
    limit: int | None = None
    cache_dir: Path | None = None
    reads: DataReads = field(default_factory=DataReads)

    def data_path(self, path: str) -> Path:
        """A data file (as given, else shipped in ``erasebench/data``), recorded in :attr:`reads`.

        Raises:
            MissingFileError: The file exists in neither place.
        """
        return self.reads.resolve(path)


class Plugin:
    """Common base: a registry name and a validated config."""

    #: Registry key, set by ``@register_method`` / ``@register_evaluator``.
    name: ClassVar[str] = ""
    #: How reports print it (``"All-but-one"``); empty = the registry key.
    display_name: ClassVar[str] = ""
    #: Settings dataclass; its defaults are the paper's.
    Config: ClassVar[type] = NoConfig
    #: Settings under which it runs offline and in seconds on the tiny test model (few steps; a backbone with
    #: random weights, named as such); the contract tests use them on top of the YAML defaults.
    smoke_settings: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, config: Any = None) -> None:
        """Create the plugin.

        Args:
            config: An instance of ``type(self).Config``; defaults to the paper settings.
        """
        self.config = config if config is not None else self.Config()

    def settings(self) -> dict[str, Any]:
        """The settings recorded beside every number this plugin produces."""
        return dataclasses.asdict(self.config) if dataclasses.is_dataclass(self.config) else {}


class Method(Plugin, ABC):
    """A concept-erasure method.

    Attributes:
        resolved: Settings the method derived from the task during :meth:`erase` (e.g. ``train_method: auto``
            -> ``noxattn``); the harness saves them in ``erased/meta.json``.
        diagnostics: Per-step traces a method keeps for debugging (e.g. AdvAnchor's); saved beside them.
    """

    resolved: Any = None
    diagnostics: Any = None
    #: Where the implementation comes from when it is not the authors' code, e.g. ``"reimplementation from the
    #: paper (no official code)"``; reports print it in the table notes. Empty = follows the official code.
    provenance: ClassVar[str] = ""

    @abstractmethod
    def erase(self, pipe: DiffusionPipeline, task: Task, run: RunContext) -> DiffusionPipeline:
        """Return a pipeline that no longer renders ``task.concept_text``.

        Methods may edit ``pipe`` in place. The harness saves the tensors that changed.

        Args:
            pipe: The pipeline to edit, on ``run.device``.
            task: The task, with the concept and the prompt splits.
            run: Seed, device, cached generation and the run directory.
        """

    def trained_tensors(self, pipe: DiffusionPipeline, task: Task) -> set[str] | None:
        """The weights :meth:`erase` changes on ``pipe`` for ``task``, as ``component.tensor_name``
        (``unet.…``, ``text_encoder.…``: the names of :func:`erasebench.generate.weight_digests`).

        Called before :meth:`erase`, on the original pipeline. The contract tests check that exactly these
        change, each of them; ``None`` (the default) means the plugin does not declare them.
        """
        return None


class Evaluator(Plugin, ABC):
    """A metric over a task's splits."""

    #: Metric name -> whether higher is better. Declares every metric the evaluator returns.
    higher_is_better: ClassVar[Mapping[str, bool]] = {}
    #: (split, metric) -> its metadata; split ``"*"`` = every split. What is not listed falls back on
    #: :attr:`higher_is_better` (see :meth:`metric_info`).
    metrics: ClassVar[Mapping[tuple[str, str], MetricInfo]] = {}
    #: Whether it compares with the original model's images; the harness then renders those before erasure.
    needs_original: ClassVar[bool] = False

    @classmethod
    def describe(cls, settings: Mapping[str, Any]) -> str:
        """The recorded settings that identify how it measured, in a few words for a table note (e.g.
        ``backend inception, 2048 dims``); empty = nothing beyond the defaults worth saying."""
        return ""

    @classmethod
    def metric_info(cls, split: str, metric: str) -> MetricInfo:
        """The metadata of ``metric`` on ``split``: :attr:`metrics` for the split, then for ``"*"``, else a
        mean over images in the direction :attr:`higher_is_better` declares."""
        for key in ((split, metric), ("*", metric)):
            if key in cls.metrics:
                return cls.metrics[key]
        return MetricInfo(cls.higher_is_better.get(metric), display=metric)

    @abstractmethod
    def evaluate(self, pipe: DiffusionPipeline, task: Task, run: RunContext) -> dict[str, dict[str, float | Score]]:
        """Measure ``pipe`` on the task.

        Args:
            pipe: The (possibly erased) pipeline.
            task: The task; ``task.splits`` holds the images to generate (already capped by ``limit``).
            run: Seed, device, cached generation.

        Returns:
            Split name -> {metric name -> value}. Metric names must be keys of ``higher_is_better``.
        """

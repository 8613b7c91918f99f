"""FID and KID of each split's images against a reference set.

Protocol (``eval-protocol.md`` §4):

* Statistics are torchmetrics' ``FrechetInceptionDistance`` and ``KernelInceptionDistance`` (1.9): the
  Fréchet distance of Gaussian fits, and the unbiased polynomial-kernel MMD over random subsets.
* Features (``backend``):

  - ``inception`` (default): torch-fidelity's TF-ported Inception-v3 pool features (2048-d), weights
    ``weights-inception-2015-12-05-6726825d.pth`` from the torch.hub cache (never downloaded during a run; see
    :mod:`erasebench.weights`). ``antialias=False`` by default: torchmetrics' own default (``True``) resizes
    to 299 px with torch's antialiased bilinear, which is *not* what TF / torch-fidelity / pytorch-fid do;
    ``False`` selects torch-fidelity's TF1-compatible bilinear resize, so values are comparable with
    torch-fidelity and TF FID. The setting is recorded.
  - ``toy``: penultimate features of the toy-world classifier (``erasebench.toy``). Reported as
    ``toy_fid`` / ``toy_kid`` so a toy number can never sit in an Inception FID column.
  - ``random_test``: a small conv net with seeded random weights, for offline tests only; reported as
    ``random_test_fid`` / ``random_test_kid``.

* Reference (``reference``):

  - ``original`` (default, AdvAnchor's ``eval-scripts/FID_eval.py``): per split, the original model's images
    for the same prompts and seeds (rendered once before erasure in the shared cache).
  - ``folder``: real images from ``reference_dir`` (e.g. COCO val images, as MACE / AdvUnlearn), sorted by
    file name, the first ``max_reference_images`` of them; the count is recorded as ``reference_images``.

* KID is reported next to FID (``kid: true``) because per-concept sets are small (tens to hundreds of
  images): FID on 2048-d features is biased and rank-deficient below 2048 images, KID is unbiased. The KID
  subset size is ``min(kid_subset_size, n_generated, n_reference)`` and its subsets are drawn with a fixed seed
  (torchmetrics draws them from the global RNG), so a rerun gives the same number.

Deviations: AdvAnchor computes FID with a pytorch-fid-style script (pytorch-fid weights, PIL resize);
torch-fidelity's Inception weights and TF1 resize are used here instead (same 2015 TF graph; values agree
with torch-fidelity, not bit-for-bit with pytorch-fid). MACE's clean-fid (PIL bicubic "clean" resize) is not
reproduced.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from erasebench.evaluators._common import RANDOM_TEST, file_digest, same_size_batches, seeded, to_uint8

from erasebench import stats, weights
from erasebench.api import Evaluator, MetricInfo, RunContext, Score, Task
from erasebench.errors import ConfigError, MissingFileError
from erasebench.registry import register_evaluator

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

log = logging.getLogger("erasebench")

BACKENDS = ("inception", "toy", "random_test")
#: Metric names per backend: only the Inception backend reports plain ``fid`` / ``kid``.
METRICS = {"inception": ("fid", "kid"), "toy": ("toy_fid", "toy_kid"), "random_test": ("random_test_fid",
                                                                                         "random_test_kid")}
INCEPTION_KEY = "inception_v3_tf_2015_12_05"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class RandomTestFeatures:
    """Namespace for the random test feature net (built lazily: torch is imported inside)."""

    DIM = 32

    @staticmethod
    def build() -> torch.nn.Module:
        """A 3-layer conv net with seeded random weights: uint8 ``(B, 3, H, W)`` -> ``(B, 32)`` features."""
        from torch import nn

        class _Net(nn.Module):
            num_features = RandomTestFeatures.DIM

            def __init__(self) -> None:
                super().__init__()
                self.body = nn.Sequential(
                    nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                    nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                    nn.Conv2d(32, RandomTestFeatures.DIM, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                )

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.body(x.float() / 127.5 - 1.0)

        return seeded(_Net, 0).eval()


def build_inception(antialias: bool, dims: int = 2048, device: Any = "cpu") -> torch.nn.Module:
    """torchmetrics' ``NoTrainInceptionV3`` with the cached TF weights, loaded safely.

    torch-fidelity would unpickle the file with ``weights_only=False``; instead the file is read here with
    ``weights_only=True`` (tensors only) and handed over as an in-memory copy of that validated state dict.

    Raises:
        MissingFileError: The weights are not in the torch.hub cache (message names the fetch command).
    """
    import torch
    from torchmetrics.image.fid import NoTrainInceptionV3

    path = weights.require(INCEPTION_KEY, "evaluator 'fid' (backend inception)")
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(dims)],
                             feature_extractor_weights_path=buf,  # type: ignore[arg-type]
                             antialias=antialias)
    return net.to(device).eval()


def build_toy_features(device: Any = "cpu") -> tuple[torch.nn.Module, str]:
    """The toy classifier's penultimate features as a uint8 -> features module, and its weights id."""
    import torch
    import torch.nn.functional as F

    from erasebench.toy import classifier_paths
    from erasebench.toy.classifier import load_classifier

    model = load_classifier(str(device))
    weights_id = f"toy_classifier:{file_digest(classifier_paths()[0])}"

    class _ToyFeatures(torch.nn.Module):
        num_features = model.cfg.feature_dim

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.float() / 255.0
            if x.shape[-1] != model.cfg.image_size or x.shape[-2] != model.cfg.image_size:
                # The same resize as erasebench.toy.classifier.predict.
                x = F.interpolate(x, size=model.cfg.image_size, mode="bilinear", antialias=True)
            return self.model.features(x)

    return _ToyFeatures().eval(), weights_id


def frechet_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID via torchmetrics' ``FrechetInceptionDistance`` fed with precomputed features."""
    metric = _fid_metric(real.shape[1])
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


class _Identity:
    """Feature 'extractor' that passes precomputed features through (declares their width to torchmetrics)."""

    @staticmethod
    def build(dim: int) -> torch.nn.Module:
        import torch

        class _Pass(torch.nn.Module):
            num_features = dim

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x

        return _Pass()


def _fid_metric(dim: int) -> Any:
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=_Identity.build(dim), reset_real_features=True)


def kid_from_features(real: torch.Tensor, fake: torch.Tensor, subset_size: int, subsets: int, seed: int) -> float:
    """KID (mean over subsets) via torchmetrics' ``KernelInceptionDistance`` on precomputed features."""
    import torch
    from torchmetrics.image.kid import KernelInceptionDistance

    with warnings.catch_warnings():  # "will save all extracted features": that is what we hand it anyway
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=_Identity.build(real.shape[1]), subsets=subsets,
                                         subset_size=subset_size)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # torchmetrics draws the subsets from the global RNG
        mean, _ = metric.compute()
    return float(mean)


@register_evaluator("fid")
class FID(Evaluator):
    """FID and KID of each split against the original model's images (or a folder of real images)."""

    display_name = "FID"

    @classmethod
    def describe(cls, settings: Mapping[str, Any]) -> str:
        """Backend, Inception layer and reference set."""
        words = [f"backend {settings.get('backend')}"]
        if settings.get("backend") == "inception":
            words.append(f"{settings.get('dims')} dims")
        if settings.get("reference") == "folder":
            words.append(f"reference {settings.get('reference_images')} real images")
        return ", ".join(words)

    higher_is_better = {name: False for pair in METRICS.values() for name in pair}
    # Distances from the original model's images of the same prompts (AdvAnchor's per-concept FID): on the
    # erase split erasing should move far (higher is better), on the preserve split stay close. Against a
    # folder of real images (COCO), closer is better on any split.
    metrics = {(split, name): MetricInfo(split == "erase", label, per_image="")
               for pair, labels in ((METRICS["inception"], ("FID", "KID")), (METRICS["toy"], ("toy FID", "toy KID")),
                                    (METRICS["random_test"], ("test FID", "test KID")))
               for name, label in zip(pair, labels, strict=True) for split in ("erase", "preserve", "*")}
    #: The class default is conservative; an instance with ``reference: folder`` sets it to False so the
    #: harness does not render originals nobody reads (COCO-30k prompts would cost hours).
    needs_original = True
    smoke_settings = {"backend": "random_test"}

    @dataclass
    class Config:
        """Settings (defaults: AdvAnchor's per-concept FID against the original model's images).

        Attributes:
            backend: ``inception``, ``toy`` or ``random_test`` (tests only; metric names say so).
            weights: Weights id, filled in by the evaluator (leave empty).
            dims: Inception feature layer (2048 = pool3, the standard; 64/192/768 are not comparable); for the
                other backends the evaluator records their feature width here.
            antialias: Inception resize to 299 px: False = TF1-compatible bilinear (torch-fidelity, TF FID),
                True = torch antialiased bilinear (torchmetrics' default).
            reference: ``original`` or ``folder``.
            reference_dir: Folder of reference images (``reference: folder``).
            max_reference_images: Use at most this many reference images (first by sorted name); None = all.
            kid: Also report KID.
            kid_subset_size: KID subset size, capped at the smaller set's size.
            kid_subsets: Number of KID subsets.
            kid_seed: Seed of the KID subset draw.
            batch_size: Images per feature-extractor call.
            bootstrap: Resamples of a bootstrap interval over images (0 = none, the default): the split's items are
                drawn with replacement, jointly in both sets when the reference is the original model's images of
                the same items, and FID (and KID) recomputed on each draw. Off by default because a resampled set
                repeats images, which shrinks its covariance and biases FID upward: on 40 random 64-d feature
                pairs the 95% interval was 4.38-5.01 around a full-set FID of 3.95. Rows then say "no CI".
            bootstrap_max_dims: No interval above this feature width (Inception's 2048 dims cost seconds per
                resample on a CPU); rows then say "no CI" and why.
        """

        backend: str = "inception"
        weights: str = ""
        dims: int = 2048
        antialias: bool = False
        reference: str = "original"
        reference_dir: str | None = None
        max_reference_images: int | None = None
        kid: bool = True
        kid_subset_size: int = 100
        kid_subsets: int = 100
        kid_seed: int = 0
        batch_size: int = 50
        bootstrap: int = 0
        bootstrap_max_dims: int = 512

    def __init__(self, config: Any = None) -> None:
        """Validate the settings and record the weights id."""
        super().__init__(config)
        c = self.config
        if c.backend not in BACKENDS:
            raise ConfigError(f"fid: backend must be one of {', '.join(BACKENDS)}, not '{c.backend}'")
        if c.reference not in ("original", "folder"):
            raise ConfigError(f"fid: reference must be 'original' or 'folder', not '{c.reference}'")
        if c.reference == "folder" and not c.reference_dir:
            raise ConfigError("fid: reference 'folder' needs reference_dir, a folder of real images "
                              "(e.g. COCO val2014): set task.evaluators.fid.reference_dir=/path/to/images")
        if c.kid_subset_size < 2:
            raise ConfigError("fid: kid_subset_size must be at least 2")
        expected = {"inception": f"{INCEPTION_KEY}:{weights.get(INCEPTION_KEY).filename}",
                    "random_test": f"{RANDOM_TEST}:seed0", "toy": ""}[c.backend]
        if c.weights and c.weights != expected and c.backend != "toy":
            raise ConfigError(f"fid: 'weights' is filled in by the evaluator; leave it empty (got '{c.weights}')")
        if c.backend == "inception" and c.dims not in (64, 192, 768, 2048):
            raise ConfigError(f"fid: dims must be 64, 192, 768 or 2048 (Inception layers), not {c.dims}")
        # dims records the feature width actually used (the toy net's is known once it is loaded).
        dims = {"inception": c.dims, "random_test": RandomTestFeatures.DIM, "toy": c.dims}[c.backend]
        self.config = replace(c, weights=expected or c.weights, dims=dims)
        self.needs_original = c.reference == "original"  # type: ignore[misc]  # instance-level refinement
        self._reference_images: int | None = None

    def settings(self) -> dict[str, Any]:
        """The config, plus the number of reference images of a folder reference (known after evaluate)."""
        out = super().settings()
        if self.config.reference == "folder":
            out["reference_images"] = self._reference_images
        return out

    # -- features --------------------------------------------------------------------------------------------

    def _extractor(self, device: Any) -> torch.nn.Module:
        c = self.config
        if c.backend == "inception":
            return build_inception(c.antialias, c.dims, device)
        if c.backend == "toy":
            net, weights_id = build_toy_features(device)
            self.config = replace(c, weights=weights_id, dims=int(net.num_features))
            return net
        return RandomTestFeatures.build().to(device)

    def features(self, net: torch.nn.Module, images: list[Image], device: Any) -> torch.Tensor:
        """Features ``(N, D)`` (float64, CPU) of PIL images, in batches of one resolution."""
        import torch

        out = []
        with torch.no_grad():
            for batch in same_size_batches(images, self.config.batch_size):
                out.append(net(to_uint8(batch).to(device)).reshape(len(batch), -1).double().cpu())
        return torch.cat(out)

    def _folder_images(self) -> list[Image]:
        from PIL import Image as PILImage

        folder = Path(str(self.config.reference_dir)).expanduser()
        if not folder.is_dir():
            raise MissingFileError(f"fid: reference_dir '{folder}' is not a directory. Point evaluators.fid."
                                   "reference_dir at a folder of real images (e.g. COCO val2014).")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if self.config.max_reference_images is not None:
            files = files[: self.config.max_reference_images]
        if len(files) < 2:
            raise MissingFileError(f"fid: reference_dir '{folder}' holds {len(files)} images; FID needs at least 2.")
        return [PILImage.open(p).convert("RGB") for p in files]

    # -- metric ----------------------------------------------------------------------------------------------

    def evaluate(self, pipe: Any, task: Task, run: RunContext) -> dict[str, dict[str, float | Score]]:
        """FID (and KID) per split; ``n`` of each row is the number of generated images."""
        c = self.config
        device = run.device
        net = self._extractor(device)
        fid_name, kid_name = METRICS[c.backend]
        folder_feats = None
        if c.reference == "folder":
            ref_images = self._folder_images()
            self._reference_images = len(ref_images)
            folder_feats = self.features(net, ref_images, device)
        out: dict[str, dict[str, float | Score]] = {}
        for split, items in task.splits.items():
            fake = self.features(net, run.generate(pipe, items), device)
            real = folder_feats if folder_feats is not None else self.features(net, run.original_images(items),
                                                                                  device)
            n_min = min(len(fake), len(real))
            if n_min < 2:
                log.warning("fid: split '%s' has %d image(s); FID needs at least 2 per set, skipped", split, n_min)
                continue
            if n_min < real.shape[1]:
                log.info("fid: split '%s': %d images < %d feature dims; the covariance is rank-deficient and FID "
                         "is biased upwards (compare KID, or only runs with the same n)", split, n_min, real.shape[1])
            fid = frechet_from_features(real, fake)
            size = min(c.kid_subset_size, n_min)
            kid = kid_from_features(real, fake, size, c.kid_subsets, c.kid_seed) if c.kid else None
            (fid_ci, kid_ci), method = self.bootstrap(real, fake, size, paired=folder_feats is None)
            out[split] = {fid_name: Score(fid, len(fake), ci=fid_ci, ci_method=method)}
            if kid is not None:
                out[split][kid_name] = Score(kid, len(fake), ci=kid_ci, ci_method=method)
        return out

    def bootstrap(self, real: torch.Tensor, fake: torch.Tensor, kid_size: int,
                  paired: bool) -> tuple[tuple[tuple[float, float] | None, tuple[float, float] | None], str]:
        """Percentile intervals of FID and KID over resampled image sets (see ``Config.bootstrap``).

        Returns:
            ``((fid_ci, kid_ci), how)``; the intervals are ``None`` and ``how`` says why when none is made.
        """
        import numpy as np

        c = self.config
        if c.bootstrap < 2:
            return (None, None), "no CI (set-level metric; fid bootstrap: 0)"
        if real.shape[1] > c.bootstrap_max_dims:
            return (None, None), f"no CI ({real.shape[1]} feature dims > bootstrap_max_dims {c.bootstrap_max_dims})"
        rng = np.random.default_rng(stats.SEED)
        fids, kids = [], []
        for _ in range(c.bootstrap):
            i = torch_index(rng.integers(0, len(fake), len(fake)))
            j = i if paired and len(real) == len(fake) else torch_index(rng.integers(0, len(real), len(real)))
            fids.append(frechet_from_features(real[j], fake[i]))
            if c.kid:
                kids.append(kid_from_features(real[j], fake[i], kid_size, c.kid_subsets, c.kid_seed))
        tail = (1 - stats.LEVEL) / 2

        def interval(draws: list[float]) -> tuple[float, float] | None:
            return tuple(float(q) for q in np.quantile(draws, [tail, 1 - tail])) if draws else None  # type: ignore[return-value]

        over = "items, paired with the reference" if paired and len(real) == len(fake) else "image sets"
        return (interval(fids), interval(kids)), stats.ci_method(c.bootstrap, over=over)


def torch_index(indices: Any) -> torch.Tensor:
    """A numpy index array as a torch index tensor."""
    import torch

    return torch.as_tensor(indices, dtype=torch.long)


__all__ = ["FID", "RandomTestFeatures", "build_inception", "frechet_from_features", "kid_from_features"]

"""FID and Inception Score of generated images, computed by torchmetrics."""

import warnings
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from gentrain.errors import GentrainError
from gentrain.metrics.features import ImageFeatureExtractor


class ImageQuality:
    """FID against fixed real images, and IS, for batches of generated images.

    The real statistics are computed once here; each `compute` reuses them. IS uses `is_splits`
    splits: the usual 10 assume ~50k images, while with a few hundred each split's estimate of the
    marginal p(y) is noisy and biases IS low, so one split is the default.
    """

    def __init__(
        self,
        *,
        extractor: ImageFeatureExtractor,
        real_images: Tensor,
        device: torch.device | str | None = None,
        batch_size: int = 256,
        is_splits: int = 1,
    ) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.inception import InceptionScore

        if len(real_images) < 2:
            raise GentrainError(f"FID needs at least 2 real images, got {len(real_images)}")
        self.device = torch.device(device or "cpu")
        self.extractor = extractor.eval().to(self.device)
        self.batch_size = batch_size
        self.image_shape = tuple(real_images.shape[1:])
        # One extractor pass per batch feeds both metrics, so they get features already extracted.
        # sync_on_compute=False: evaluation runs in one process; a collective would hang there.
        self._fid = FrechetInceptionDistance(
            feature=_Precomputed(extractor.num_features),
            reset_real_features=False,
            sync_on_compute=False,
        ).to(self.device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*save all extracted features")
            self._is = InceptionScore(
                feature=_Precomputed(extractor.num_classes), splits=is_splits, sync_on_compute=False
            ).to(self.device)
        for features, _ in self._extract(real_images):
            self._fid.update(features, real=True)

    def compute(self, fake_images: Tensor) -> dict[str, float]:
        """{"fid", "is"} of generated images in [-1, 1] (N, C, H, W), N >= 2."""
        if len(fake_images) < 2 or tuple(fake_images.shape[1:]) != self.image_shape:
            raise GentrainError(
                f"image metrics need at least 2 generated images shaped like the real ones "
                f"(N, {', '.join(map(str, self.image_shape))}), got {tuple(fake_images.shape)}"
            )
        self._fid.reset()  # keeps the real statistics
        self._is.reset()
        for features, logits in self._extract(fake_images):
            self._fid.update(features, real=False)
            self._is.update(logits)
        fid = self._fid.compute()
        # IS shuffles its splits with torch's global RNG: fork it so that evaluating never shifts
        # the training run's random stream, and seed it so that the splits are reproducible.
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            torch.manual_seed(0)
            warnings.filterwarnings("ignore", message="std\\(\\): degrees of freedom")
            inception_score, _ = self._is.compute()  # its std is nan with one split
        self._is.reset()  # frees the stored logits
        return {"fid": float(fid), "is": float(inception_score)}

    def _extract(self, images: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
        """(features (B, F), logits (B, K)) per batch, in float64: IS's softmax in float32 rounds
        very unlikely classes to exactly 0 and a class at 0 for every image makes IS nan."""
        with torch.no_grad():
            for batch in images.split(self.batch_size):
                features, logits = self.extractor(batch.to(self.device))
                yield features.double(), logits.double()


class _Precomputed(nn.Identity):
    """The metrics' feature extractor: `num_features` spares torchmetrics a probing forward pass."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

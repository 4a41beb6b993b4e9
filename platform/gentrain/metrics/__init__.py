"""Image-quality metrics (FID, IS); torchmetrics and torch-fidelity are imported only on use."""

from gentrain.metrics.features import (
    DigitsClassifier,
    ImageFeatureExtractor,
    InceptionFeatures,
    ensure_available,
    load_feature_extractor,
)
from gentrain.metrics.image import ImageQuality

__all__ = [
    "DigitsClassifier",
    "ImageFeatureExtractor",
    "ImageQuality",
    "InceptionFeatures",
    "ensure_available",
    "load_feature_extractor",
]

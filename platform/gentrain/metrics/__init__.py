"""Image-quality metrics (FID, IS); torchmetrics and torch-fidelity are imported only on use."""

from gentrain.metrics.features import (
    FEATURE_EXTRACTORS,
    DigitsClassifier,
    ImageFeatureExtractor,
    InceptionFeatures,
    default_features,
    ensure_available,
    load_feature_extractor,
)
from gentrain.metrics.image import ImageQuality

__all__ = [
    "FEATURE_EXTRACTORS",
    "DigitsClassifier",
    "ImageFeatureExtractor",
    "ImageQuality",
    "InceptionFeatures",
    "default_features",
    "ensure_available",
    "load_feature_extractor",
]

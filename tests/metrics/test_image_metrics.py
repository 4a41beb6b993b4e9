"""FID / IS through torchmetrics, checked against independent computations."""

import re
import urllib.error

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import Tensor
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

from gentrain.data.digits import load_digits
from gentrain.errors import GentrainError, SpecError
from gentrain.metrics import ImageFeatureExtractor, ImageQuality, load_feature_extractor
from gentrain.metrics import features as features_module
from gentrain.spec_sections import FEATURE_EXTRACTORS, default_features

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def _noise(n: int) -> Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(n)) * 2 - 1


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gentrain-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GENTRAIN_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def classifier(cache_dir):
    # Trains once, into cache_dir; under no_grad, as an evaluation loop may first ask for it.
    with torch.no_grad():
        return load_feature_extractor("classifier:digits")


@pytest.fixture(scope="module")
def digits():
    return {"train": load_digits("train"), "heldout": load_digits("heldout")}


@pytest.fixture(scope="module")
def quality(classifier, digits):
    return ImageQuality(extractor=classifier, real_images=digits["heldout"][0], batch_size=100)


def test_classifier_is_accurate_on_heldout_digits(classifier, digits):
    images, labels = digits["heldout"]
    with torch.no_grad():
        features, logits = classifier(images)
    assert features.shape == (len(images), classifier.num_features)
    assert logits.shape == (len(images), 10)
    assert (logits.argmax(1) == labels).float().mean() > 0.9


def test_classifier_is_cached_under_its_hash_and_reused(
    classifier, cache_dir, tmp_path, monkeypatch
):
    (cached,) = cache_dir.iterdir()  # no temporary file is left behind
    assert re.fullmatch(r"classifier_digits-[0-9a-f]{12}\.pt", cached.name)
    assert cached.name == f"classifier_digits-{features_module._classifier_key()}.pt"
    mtime = cached.stat().st_mtime_ns

    def no_training():
        raise AssertionError("retrained although the cache file exists")

    monkeypatch.setattr(features_module, "_train_digits_classifier", no_training)
    again = load_feature_extractor("classifier:digits")
    assert cached.stat().st_mtime_ns == mtime
    for name, tensor in classifier.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor)
    monkeypatch.setenv("GENTRAIN_CACHE_DIR", str(tmp_path))  # an explicit cache_dir wins
    load_feature_extractor("classifier:digits", cache_dir=cache_dir)

    recipe = {**features_module._CLASSIFIER_RECIPE, "epochs": 1}
    monkeypatch.setattr(features_module, "_CLASSIFIER_RECIPE", recipe)
    assert features_module._classifier_key() not in cached.name  # a new recipe, a new file


def test_fid_is_small_for_real_digits_and_large_for_noise(quality, digits):
    real = quality.compute(digits["train"][0])
    noise = quality.compute(_noise(359))
    assert 0 <= real["fid"] < 20
    assert noise["fid"] > 10 * real["fid"]
    assert real["is"] > 8 > 3 > noise["is"]  # confident over ~10 classes vs. not
    assert quality.compute(digits["train"][0]) == real  # the real statistics are reused intact


def test_real_statistics_are_extracted_once(quality, digits):
    seen = []
    hook = quality.extractor.register_forward_hook(
        lambda _m, inputs, _o: seen.append(len(inputs[0]))
    )
    try:
        quality.compute(digits["train"][0][:250])
    finally:
        hook.remove()
    assert seen == [100, 100, 50]  # only the generated images, in batches


def _numpy_fid(real: np.ndarray, fake: np.ndarray) -> float:
    mu1, mu2 = real.mean(0), fake.mean(0)
    sigma1, sigma2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1 + sigma2 - 2 * covmean))


def _fidelity_fid(real: np.ndarray, fake: np.ndarray) -> float:
    stats = [{"mu": x.mean(0), "sigma": np.cov(x, rowvar=False)} for x in (real, fake)]
    return fid_statistics_to_metric(*stats, verbose=False)[KEY_METRIC_FID]


@pytest.mark.parametrize("fake", ["train", "noise"])
def test_fid_matches_scipy_and_torch_fidelity(quality, classifier, digits, fake):
    fake_images = digits["train"][0] if fake == "train" else _noise(300)
    with torch.no_grad():
        real_features = classifier(digits["heldout"][0])[0].double().numpy()
        fake_features = classifier(fake_images)[0].double().numpy()
    ours = quality.compute(fake_images)["fid"]
    assert ours == pytest.approx(_numpy_fid(real_features, fake_features), rel=1e-3)
    assert ours == pytest.approx(_fidelity_fid(real_features, fake_features), rel=1e-3)


class OneHotLogits(ImageFeatureExtractor):
    """Reads each (1, 1, k) image as its logits, scaled so that softmax is one-hot to ~1e-26 (an
    exact 0 in a class that no image of a split predicts would make torchmetrics' IS nan)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.num_features = self.num_classes = k

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        logits = images.flatten(1) * 30  # (N, k)
        return logits, logits


@pytest.mark.parametrize("k", [2, 5, 10])
def test_inception_score_of_confident_even_predictions_is_the_class_count(k):
    one_hot = torch.eye(k).repeat(7, 1) * 2 - 1  # (7k, k) in {-1, 1}, every class 7 times
    images = one_hot.reshape(-1, 1, 1, k)
    quality = ImageQuality(extractor=OneHotLogits(k), real_images=images)
    assert quality.compute(images)["is"] == pytest.approx(k, rel=1e-3)
    assert quality.compute(torch.zeros_like(images))["is"] == pytest.approx(1.0, rel=1e-6)


def test_inception_score_with_splits_is_reproducible_and_leaves_global_rng_alone(digits):
    images = (torch.eye(10).repeat(5, 1) * 2 - 1).reshape(-1, 1, 1, 10)
    quality = ImageQuality(extractor=OneHotLogits(10), real_images=images, is_splits=5)
    torch.manual_seed(1)
    expected_draw = torch.rand(3)
    torch.manual_seed(1)
    first = quality.compute(images)["is"]
    assert torch.equal(torch.rand(3), expected_draw)
    assert quality.compute(images)["is"] == first
    assert 1 < first <= 10


def test_unknown_feature_extractor_is_a_spec_error():
    with pytest.raises(SpecError, match=r"eval\.features.*classifier:digits, inception"):
        load_feature_extractor("resnet")


def test_default_features():
    assert default_features("builtin:digits") == "classifier:digits"
    assert default_features("s3://bucket/images") == "inception"
    assert set(FEATURE_EXTRACTORS) == {"classifier:digits", "inception"}


def test_missing_inception_weights_name_both_places(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere.pth"
    monkeypatch.setenv("GENTRAIN_INCEPTION_WEIGHTS", str(missing))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub_file = tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION_FILE
    with pytest.raises(GentrainError) as raised:
        load_feature_extractor("inception")
    message = str(raised.value)
    assert str(missing) in message and str(hub_file) in message and "https://" in message
    assert "\n" not in message


def test_undownloadable_inception_weights_raise_plainly(tmp_path, monkeypatch):
    monkeypatch.delenv("GENTRAIN_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, path):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(features_module, "_download", offline)
    with pytest.raises(GentrainError) as raised:
        load_feature_extractor("inception")
    hub_file = tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION_FILE
    assert str(hub_file) in str(raised.value) and "name resolution" in str(raised.value)
    assert raised.value.__suppress_context__  # no network traceback chained under it


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory):
    """A randomly initialised torch-fidelity InceptionV3 state dict (its constructor always loads
    weights, so the loading step is stubbed out while building it)."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: None)
        patch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda *a: None)
        net = tf_inception.FeatureExtractorInceptionV3("random", ["2048"])
    torch.save(net.state_dict(), path)
    return path


def test_inception_loads_from_env_weights_and_gives_2048_features(
    random_inception_weights, monkeypatch
):
    monkeypatch.setenv("GENTRAIN_INCEPTION_WEIGHTS", str(random_inception_weights))
    extractor = load_feature_extractor("inception")
    with torch.no_grad():
        features, logits = extractor(torch.rand(2, 1, 8, 8) * 2 - 1)
    assert features.shape == (2, 2048) and logits.shape == (2, 1008)
    assert torch.isfinite(features).all() and torch.isfinite(logits).all()


def test_inception_loads_from_torch_hub_cache(random_inception_weights, tmp_path, monkeypatch):
    monkeypatch.delenv("GENTRAIN_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / INCEPTION_FILE).symlink_to(random_inception_weights)
    monkeypatch.setattr(features_module, "_download", pytest.fail)
    assert load_feature_extractor("inception").num_features == 2048


def test_inception_input_is_uint8_rgb_as_torch_fidelity_expects(random_inception_weights):
    extractor = features_module.InceptionFeatures(weights_path=random_inception_weights)
    seen = []

    def record(pixels):
        seen.append(pixels)
        return torch.zeros(len(pixels), 2048), torch.zeros(len(pixels), 1008)

    extractor.net.forward = record
    images = torch.tensor([-1.0, 0.0, 1.0, 1.5]).reshape(1, 1, 2, 2)  # 1.5: out of range
    extractor(images)
    (pixels,) = seen
    assert pixels.dtype == torch.uint8 and pixels.shape == (1, 3, 2, 2)
    assert pixels[0, :, 0, 0].tolist() == [0, 0, 0]
    assert pixels[0, 2].flatten().tolist() == [0, 128, 255, 255]
    with pytest.raises(SpecError, match="eval.features"):
        extractor(torch.zeros(1, 2, 8, 8))

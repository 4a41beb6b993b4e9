"""Feature extractors for image metrics, named by `eval.features`.

Every extractor maps images in [-1, 1] (N, C, H, W) to `(features, logits)` in one pass: the
features feed FID, the logits feed IS.
"""

import hashlib
import http.client
import json
import os
import shutil
import tempfile
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gentrain.errors import GentrainError, SpecError, first_line
from gentrain.spec_sections import FEATURE_EXTRACTORS

CACHE_DIR_ENV = "GENTRAIN_CACHE_DIR"
INCEPTION_WEIGHTS_ENV = "GENTRAIN_INCEPTION_WEIGHTS"
_DOWNLOAD_TIMEOUT_S = 60


def load_feature_extractor(name: str, *, cache_dir: Path | None = None) -> "ImageFeatureExtractor":
    """The extractor `name`, in eval mode on the CPU. The digits classifier is trained on first use
    and cached under `cache_dir` (default: $GENTRAIN_CACHE_DIR, else ~/.cache/gentrain)."""
    if name == "classifier:digits":
        if cache_dir is None:
            cache_dir = Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "gentrain")
        return _load_digits_classifier(Path(cache_dir))
    if name == "inception":
        return InceptionFeatures(weights_path=_inception_weights())
    raise SpecError(
        f"eval.features: unknown feature extractor '{name}'; "
        f"allowed: {', '.join(FEATURE_EXTRACTORS)}"
    )


def ensure_available(name: str) -> None:
    """Raise the error that loading `name` would raise later, without building it: InceptionV3's
    weights must be on disk (or downloadable); the digits classifier is trained on demand."""
    if name == "inception":
        _inception_weights()


class ImageFeatureExtractor(nn.Module):
    """forward(images (N, C, H, W) in [-1, 1])
    -> (features (N, num_features) for FID, logits (N, num_classes) for IS)."""

    num_features: int
    num_classes: int


class DigitsClassifier(ImageFeatureExtractor):
    """A small CNN for 8x8 digits: its 64-d penultimate layer (before the ReLU, so the features
    are not half zeros and their covariance has full rank) and its 10 logits."""

    num_features = 64
    num_classes = 10

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),  # (N, 16, 8, 8)
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),  # (N, 32, 8, 8)
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N, 32, 4, 4)
            nn.Flatten(),  # (N, 512)
            nn.Linear(32 * 4 * 4, self.num_features),  # (N, 64)
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(self.num_features, self.num_classes))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if tuple(images.shape[1:]) != (1, 8, 8):
            raise SpecError(
                "eval.features: 'classifier:digits' takes 1x8x8 images, got "
                f"{'x'.join(map(str, images.shape[1:]))}; use 'inception' for other data"
            )
        features = self.body(images)
        return features, self.head(features)


# Anything that changes the trained weights belongs here: it names the cache file.
_CLASSIFIER_RECIPE = {"version": 1, "seed": 0, "epochs": 12, "batch_size": 64, "lr": 1e-3}


def _classifier_key() -> str:
    from gentrain.data import digits

    recipe = {
        **_CLASSIFIER_RECIPE,
        "architecture": repr(DigitsClassifier()),
        "split": [digits.HELDOUT_FRACTION, digits.SPLIT_SEED],
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def _load_digits_classifier(cache_dir: Path) -> DigitsClassifier:
    path = cache_dir / f"classifier_digits-{_classifier_key()}.pt"
    model = DigitsClassifier()
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    except FileNotFoundError:
        pass
    except Exception:  # a damaged cache file is rebuilt, never fatal
        warnings.warn(f"rebuilding unreadable cache file {path}", stacklevel=2)
    model = _train_digits_classifier()
    try:
        with _atomic_write(path) as file:
            torch.save(model.state_dict(), file)
    except OSError as err:
        warnings.warn(f"could not cache the digits classifier at {path}: {err}", stacklevel=2)
    return model


def _train_digits_classifier() -> DigitsClassifier:
    from gentrain.data.digits import load_digits

    images, labels = load_digits("train")  # (N, 1, 8, 8), (N,)
    recipe = _CLASSIFIER_RECIPE
    threads = torch.get_num_threads()
    # A private RNG stream: deterministic weights, and the caller's global RNG is left untouched.
    # enable_grad: callers may build the extractor lazily inside their own no_grad evaluation.
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(recipe["seed"])
        # Steps this small run several times faster on one thread than on a contended pool.
        torch.set_num_threads(1)
        try:
            model = DigitsClassifier()
            optimizer = torch.optim.Adam(model.parameters(), lr=recipe["lr"])
            for _ in range(recipe["epochs"]):
                for idx in torch.randperm(len(images)).split(recipe["batch_size"]):
                    loss = F.cross_entropy(model(images[idx])[1], labels[idx])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
        finally:
            torch.set_num_threads(threads)
    return model.eval()


class InceptionFeatures(ImageFeatureExtractor):
    """torch-fidelity's InceptionV3 (the standard FID network): 2048-d pool features and the
    1008 'logits_unbiased' that torch-fidelity and torchmetrics use for IS."""

    num_features = 2048
    num_classes = 1008

    def __init__(self, *, weights_path: Path) -> None:
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        try:
            self.net = FeatureExtractorInceptionV3(
                "inception-v3-compat",
                ["2048", "logits_unbiased"],
                feature_extractor_weights_path=str(weights_path),
            )
        except Exception as err:  # unpickling a foreign file can raise anything
            raise GentrainError(
                f"could not load InceptionV3 weights from {weights_path}: {first_line(err)}"
            ) from None

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if images.shape[1] not in (1, 3):
            raise SpecError(
                f"eval.features: 'inception' takes 1- or 3-channel images, got {images.shape[1]}"
            )
        # torch-fidelity wants uint8 RGB (N, 3, H, W); it resizes to 299x299 itself.
        pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        pixels = pixels.expand(-1, 3, -1, -1)
        features, logits = self.net(pixels)
        return features, logits


def _inception_weights() -> Path:
    """$GENTRAIN_INCEPTION_WEIGHTS, else torch hub's cache (downloaded there when missing)."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[-1]
    where = (
        f"set {INCEPTION_WEIGHTS_ENV} to the file or put it at {hub_file} "
        f"(download it from {URL_INCEPTION_V3})"
    )
    explicit = os.environ.get(INCEPTION_WEIGHTS_ENV)
    if explicit:
        if Path(explicit).expanduser().is_file():
            return Path(explicit).expanduser()
        raise GentrainError(
            f"InceptionV3 weights not found at {INCEPTION_WEIGHTS_ENV}={explicit}: {where}"
        )
    if hub_file.is_file():
        return hub_file
    try:
        _download(URL_INCEPTION_V3, hub_file)
    except (OSError, http.client.HTTPException) as err:  # URLError and timeouts are OSErrors
        raise GentrainError(
            f"InceptionV3 weights are missing and could not be downloaded "
            f"({first_line(err)}): {where}"
        ) from None
    return hub_file


def _download(url: str, path: Path) -> None:
    with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
        with _atomic_write(path) as file:
            shutil.copyfileobj(response, file)


@contextmanager
def _atomic_write(path: Path) -> Iterator[BinaryIO]:
    """A temporary file in the same folder, renamed onto `path` once complete, so that concurrent
    readers see either no file or a whole one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

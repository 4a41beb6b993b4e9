"""hf_unet2d: diffusers' UNet2DModel trained as a DDPM (noise-prediction MSE under diffusers'
DDPMScheduler), sampled with its DDIMScheduler; logged as a diffusers DDIMPipeline directory."""

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gentrain import noise
from gentrain.errors import SpecError
from gentrain.families import DataInfo, PipelineUnsupported
from gentrain.families.huggingface.config import UNetConfig
from gentrain.families.huggingface.transformers_lm import WEIGHTS, local_copy

UNET_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
NO_PIPELINE = (
    "train.strategy: pipeline cannot cut hf_unet2d: its skip connections join each down block "
    "to an up block across any cut; ddp and deepspeed train it"
)


def check_unet(config: UNetConfig, job) -> None:
    if job.train.strategy == "pipeline":
        raise SpecError(NO_PIPELINE)
    if config.pretrained and not config.pretrained.startswith("s3://"):
        directory = _unet_directory(Path(config.pretrained))
        if not any((directory / name).is_file() for name in (*UNET_WEIGHTS, *WEIGHTS)):
            raise SpecError(
                f"model.overrides.pretrained: {config.pretrained} holds no UNet weights "
                f"({' or '.join(UNET_WEIGHTS)}, itself or in unet/)"
            )
    if len(config.channels) < 1 or any(c % _groups(config) for c in config.channels):
        raise SpecError(f"model.overrides.channels: {list(config.channels)}: multiples of 8")


def _unet_directory(directory: Path) -> Path:
    """A diffusers pipeline keeps its UNet in unet/; a UNet's own directory is itself."""
    return directory / "unet" if (directory / "unet" / "config.json").is_file() else directory


def _groups(config: UNetConfig) -> int:
    """GroupNorm's groups: 32 as diffusers' default, fewer for narrow debug UNets."""
    return min(32, min(config.channels)) if min(config.channels) % 8 == 0 else 8


class DDPM(nn.Module):
    """The UNet with its noise schedules: training draws a timestep and noise per image (through
    gentrain.noise: the same at any number of workers); sampling runs DDIM."""

    def __init__(self, config: UNetConfig, shape: tuple[int, ...]):
        super().__init__()
        from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

        self.shape, self.sample_steps = shape, config.sample_steps
        if config.pretrained:
            directory = _unet_directory(local_copy(config.pretrained))
            self.unet = UNet2DModel.from_pretrained(str(directory), local_files_only=True)
        else:
            levels = len(config.channels)
            down = ["DownBlock2D"] * levels
            up = ["UpBlock2D"] * levels
            if config.attention:  # at the lowest resolution
                down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
            self.unet = UNet2DModel(
                sample_size=shape[1],
                in_channels=shape[0],
                out_channels=shape[0],
                block_out_channels=config.channels,
                layers_per_block=config.layers_per_block,
                down_block_types=tuple(down),
                up_block_types=tuple(up),
                norm_num_groups=_groups(config),
            )
        schedule = {
            "num_train_timesteps": config.train_timesteps,
            "beta_schedule": config.beta_schedule,
        }
        self.train_schedule = DDPMScheduler(**schedule)
        self.sample_schedule = DDIMScheduler(**schedule)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The per-image noise-prediction MSE (B,) of `images` (B, C, H, W) in [-1, 1]."""
        steps = self.train_schedule.config.num_train_timesteps
        t = noise.randint(steps, (len(images),), device=images.device)
        eps = noise.randn(images.shape, device=images.device)
        noisy = self.train_schedule.add_noise(images, eps, t)
        predicted = self.unet(noisy, t).sample
        return F.mse_loss(predicted.float(), eps, reduction="none").flatten(1).mean(1)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """n images (n, C, H, W) in [-1, 1] by DDIM (eta 0) from Gaussian noise."""
        device = next(self.unet.parameters()).device
        return self.denoise(torch.randn(n, *self.shape, device=device))

    @torch.no_grad()
    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """Images (n, C, H, W) in [-1, 1] from Gaussian noise `x` of that shape."""
        schedule = self.sample_schedule
        schedule.set_timesteps(self.sample_steps)
        for t in schedule.timesteps:
            x = schedule.step(self.unet(x, t).sample, t, x).prev_sample
        return x.clamp(-1, 1)


class Sampler(nn.Module):
    """The run's logged PyTorch model: Gaussian noise (n, C, H, W) in, images out (DDIM)."""

    def __init__(self, ddpm: DDPM):
        super().__init__()
        self.ddpm = ddpm

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ddpm.denoise(x)

    def sample(self, n: int) -> torch.Tensor:
        return self.ddpm.sample(n)


class UNetStep:
    phases = ("unet",)
    shape: tuple[int, ...] = ()  # set by build

    def build(self, config: UNetConfig, data: DataInfo) -> dict[str, nn.Module]:
        self.shape = data.shape
        return {"unet": DDPM(config, data.shape)}

    def loss(self, models: Mapping[str, nn.Module], batch: torch.Tensor, *, phase: str):
        assert phase == "unet", phase
        return models["unet"](batch).mean(), {}

    def pipeline(self, models: Mapping[str, nn.Module], *, phase: str):
        raise PipelineUnsupported(NO_PIPELINE)

    def sample(self, models: Mapping[str, nn.Module], n: int) -> torch.Tensor:
        return models["unet"].sample(n)

    def preview(self, models: Mapping[str, nn.Module], heldout: torch.Tensor) -> torch.Tensor:
        return self.sample(models, 64)

    def export(self, models: Mapping[str, nn.Module]) -> tuple[nn.Module, torch.Tensor]:
        ddpm = models["unet"]
        return Sampler(ddpm), torch.randn(2, *self.shape, device=next(ddpm.parameters()).device)

    def export_files(self, models: Mapping[str, nn.Module], directory: Path) -> None:
        """A diffusers DDIMPipeline: `DDIMPipeline.from_pretrained(directory)` samples."""
        from diffusers import DDIMPipeline

        ddpm = models["unet"]
        DDIMPipeline(unet=ddpm.unet, scheduler=ddpm.sample_schedule).save_pretrained(directory)

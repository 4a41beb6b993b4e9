"""The DDPM: its schedules and forward process, both samplers, the EMA of its weights and the
UNet's fit to other image sizes."""

import copy
import math
import pickle

import pytest
import torch

from gentrain import spec as spec_module
from gentrain.data import load_dataset
from gentrain.errors import SpecError
from gentrain.families import all_families
from gentrain.families.diffusion.model import EMA, Diffusion, UNet
from gentrain.families.diffusion.schedule import (
    NoiseSchedule,
    cosine_alpha_bar,
    cosine_betas,
    linear_betas,
)


def _build(**overrides):
    family = all_families()["diffusion"]
    torch.manual_seed(0)
    step = family.make_step()
    data = load_dataset(family.default_source)
    models = step.build(family.config(flavor="debug", overrides=overrides), data.info)
    return step, models, data.train[:16]


def _randomise(module: torch.nn.Module) -> None:
    """The UNet's zero-initialised layers make it predict zero noise; tests want a real one."""
    for param in module.parameters():
        torch.nn.init.normal_(param, std=0.2)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("timesteps", [10, 100, 1000])
def test_schedules_are_monotone_with_alpha_bar_in_the_unit_interval(kind, timesteps):
    schedule = NoiseSchedule(kind, timesteps=timesteps)
    assert schedule.betas.shape == schedule.alpha_bar.shape == (timesteps,)
    assert (schedule.betas > 0).all() and (schedule.betas < 1).all()
    assert (schedule.alpha_bar > 0).all() and (schedule.alpha_bar <= 1).all()
    assert (schedule.alpha_bar.diff() < 0).all()  # noisier at every step
    assert schedule.alpha_bar[-1] < 0.01  # the last step is close to pure noise


def test_linear_schedule_is_ddpms_for_a_thousand_steps():
    betas = linear_betas(1000)
    torch.testing.assert_close(betas[[0, -1]], torch.tensor([1e-4, 0.02], dtype=torch.float64))
    assert (betas.diff() > 0).all()


def test_cosine_schedule_matches_its_formula():
    timesteps, s = 1000, 0.008
    betas = cosine_betas(timesteps)
    alpha_bar = torch.cumprod(1 - betas, 0)

    def f(t: float) -> float:
        return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2

    def formula(t: float) -> float:  # abar at t / T
        return f(t) / f(0)

    # Step t takes abar from f(t / T) to f((t + 1) / T); only the very last betas are clipped.
    unclipped = int((betas < 0.999).sum())
    assert unclipped >= timesteps - 2
    for t in [0, 1, 10, 250, 500, 900, unclipped - 1]:
        assert alpha_bar[t].item() == pytest.approx(formula((t + 1) / timesteps), rel=1e-9)
    grid = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    expected = torch.tensor([formula(0.0), formula(0.3), formula(1.0)], dtype=torch.float64)
    torch.testing.assert_close(cosine_alpha_bar(grid), expected)


def test_q_sample_is_the_closed_form_of_the_forward_process():
    schedule = NoiseSchedule("linear", timesteps=100)
    torch.manual_seed(0)
    x0, noise = torch.rand(4, 1, 8, 8) * 2 - 1, torch.randn(4, 1, 8, 8)
    t = torch.tensor([0, 10, 50, 99])
    alpha_bar = torch.cumprod(1 - linear_betas(100), 0)[t].float().view(-1, 1, 1, 1)
    expected = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    torch.testing.assert_close(schedule.q_sample(x0, t, noise), expected)


def test_q_sample_draws_have_the_closed_form_mean_and_variance():
    schedule = NoiseSchedule("cosine", timesteps=100)
    torch.manual_seed(0)
    draws, t = 20_000, 40
    x0 = torch.linspace(-1, 1, 64).view(1, 1, 8, 8).expand(draws, -1, -1, -1)
    x_t = schedule.q_sample(x0, torch.full((draws,), t), torch.randn(draws, 1, 8, 8))
    abar = schedule.alpha_bar[t]
    torch.testing.assert_close(x_t.mean(0), abar.sqrt() * x0[0], atol=0.04, rtol=0)
    torch.testing.assert_close(x_t.var(0), (1 - abar).expand(1, 8, 8), atol=0.04, rtol=0)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_both_samplers_recover_the_image_of_a_one_image_dataset(kind):
    # With one training image x*, the ideal denoiser knows x_0 = x* exactly: both samplers must
    # land on x* from any noise.
    schedule = NoiseSchedule(kind, timesteps=50)
    target = torch.linspace(-0.9, 0.9, 64).view(1, 1, 8, 8)

    def ideal(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = schedule.alpha_bar[t].view(-1, 1, 1, 1)
        return (x_t - abar.sqrt() * target) / (1 - abar).sqrt()

    torch.manual_seed(0)
    noise = torch.randn(3, 1, 8, 8)
    expected = target.expand(3, -1, -1, -1)
    torch.testing.assert_close(schedule.ddpm_sample(ideal, noise), expected, atol=1e-3, rtol=0)
    for steps in (50, 10, 1):
        got = schedule.ddim_sample(ideal, noise, steps=steps)
        torch.testing.assert_close(got, expected, atol=1e-3, rtol=0)


def test_ddim_over_every_timestep_and_ddpm_give_images_in_range():
    schedule = NoiseSchedule("linear", timesteps=20)
    torch.manual_seed(0)
    unet = UNet(all_families()["diffusion"].config(flavor="debug", overrides={}), (1, 8, 8))
    _randomise(unet)
    noise = torch.randn(5, 1, 8, 8)
    ddim = schedule.ddim_sample(unet, noise, steps=20)
    torch.manual_seed(1)
    ddpm = schedule.ddpm_sample(unet, noise)
    for images in (ddim, ddpm):
        assert images.shape == noise.shape and torch.isfinite(images).all()
        assert images.min() >= -1 and images.max() <= 1
    # DDIM (eta = 0) is a function of its noise; DDPM draws fresh noise at every step.
    torch.testing.assert_close(schedule.ddim_sample(unet, noise, steps=20), ddim)
    torch.manual_seed(2)
    assert not torch.allclose(schedule.ddpm_sample(unet, noise), ddpm)


def test_ema_update_follows_its_warmed_up_decay():
    net = torch.nn.Linear(3, 2)
    ema = EMA(net, decay=0.9)
    start = net.weight.detach().clone()
    torch.testing.assert_close(ema.weights()["weight"], start)
    expected = start
    for n in (1, 2, 3):
        with torch.no_grad():
            net.weight.add_(1.0)
        ema.update(net)
        decay = min(0.9, (1 + n) / (10 + n))  # 2/11, 3/12, 4/13
        expected = decay * expected + (1 - decay) * net.weight.detach()
        torch.testing.assert_close(ema.weights()["weight"], expected)
    assert ema.updates.item() == 3
    late = EMA(net, decay=0.9)
    late.updates.fill_(1000)  # past the warm-up: the configured decay
    before = late.weights()["bias"].clone()
    with torch.no_grad():
        net.bias.add_(1.0)
    late.update(net)
    torch.testing.assert_close(late.weights()["bias"], 0.9 * before + 0.1 * net.bias.detach())


def test_ema_is_buffers_in_the_state_dict_not_parameters():
    _, models, _ = _build()
    diffusion = models["diffusion"]
    ema_keys = {key for key in diffusion.state_dict() if key.startswith("ema.")}
    assert len(ema_keys) == len(list(diffusion.unet.parameters())) + 1  # and the update count
    assert not any(name.startswith("ema.") for name, _ in diffusion.named_parameters())
    assert not any(key.startswith("schedule.") for key in diffusion.state_dict())


def test_after_update_moves_the_ema_and_forward_does_not():
    step, models, batch = _build()
    diffusion = models["diffusion"]
    _randomise(diffusion.unet)  # away from the EMA's copy of the initial weights
    before = copy.deepcopy(diffusion.ema.weights())
    step.loss(models, batch, phase="diffusion")
    assert diffusion.ema.updates.item() == 0
    step.after_update(models, phase="diffusion")
    assert diffusion.ema.updates.item() == 1
    after = diffusion.ema.weights()
    assert all(not torch.equal(before[name], after[name]) for name in after)


def test_sampling_uses_the_ema_weights():
    step, models, _ = _build()
    diffusion = models["diffusion"].eval()
    _randomise(diffusion.unet)
    averaged = copy.deepcopy(diffusion.unet)
    _randomise(averaged)
    for name, value in averaged.state_dict().items():
        diffusion.ema.weights()[name].copy_(value)
    noise = torch.randn(4, 1, 8, 8)
    steps = diffusion.sample_steps
    with_ema = diffusion.schedule.ddim_sample(averaged, noise, steps=steps)
    with_live = diffusion.schedule.ddim_sample(diffusion.unet, noise, steps=steps)
    torch.testing.assert_close(diffusion.generate(noise), with_ema)
    assert not torch.allclose(with_ema, with_live)


def test_without_ema_sampling_uses_the_trained_weights():
    _, models, _ = _build(ema_decay=0.0)
    diffusion = models["diffusion"].eval()
    assert diffusion.ema is None
    _randomise(diffusion.unet)
    noise = torch.randn(4, 1, 8, 8)
    expected = diffusion.schedule.ddim_sample(diffusion.unet, noise, steps=diffusion.sample_steps)
    torch.testing.assert_close(diffusion.generate(noise), expected)


def test_exported_generator_samples_with_the_ema_after_pickling():
    step, models, _ = _build()
    diffusion = models["diffusion"]
    _randomise(diffusion.unet)
    module, example = step.export(models)
    restored = pickle.loads(pickle.dumps(module)).eval()
    torch.testing.assert_close(restored(example), module.eval()(example))
    samples = restored.sample(3)
    assert samples.shape == (3, 1, 8, 8) and samples.abs().max() <= 1


@pytest.mark.parametrize(
    ("shape", "levels"), [((3, 32, 32), 3), ((1, 28, 28), 3), ((3, 12, 12), 2), ((1, 9, 9), 1)]
)
def test_unet_takes_its_channels_and_size_from_the_data(shape, levels):
    config = all_families()["diffusion"].config(flavor="debug", overrides={"levels": 3})
    diffusion = Diffusion(config, shape)
    assert len(diffusion.unet.down) == levels - 1
    _randomise(diffusion.unet)
    x = torch.rand(2, *shape) * 2 - 1
    loss = diffusion(x)
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    assert diffusion.eval().sample(2).shape == (2, *shape)


@pytest.mark.parametrize(
    ("key", "value"),
    [("schedule", "quadratic"), ("sample_steps", 101), ("ema_decay", 1.0), ("norm_groups", 3)],
)
def test_bad_settings_are_spec_errors_naming_the_key(key, value):
    raw = {"name": "d", "model": {"family": "diffusion", "flavor": "debug"}}
    raw["model"]["overrides"] = {key: value}
    with pytest.raises(SpecError, match=f"model.overrides.{key}"):
        spec_module.validate(raw)

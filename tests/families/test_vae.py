"""The VAE's ELBO: its KL term, its discretised likelihood and how the logged terms relate."""

import torch
from torch.distributions import Independent, Normal, kl_divergence

from gentrain.data import load_dataset
from gentrain.families import all_families
from gentrain.families.vae.model import discretised_logistic_log_prob, kl_to_standard_normal


def _build(**overrides):
    family = all_families()["vae"]
    torch.manual_seed(0)
    step = family.make_step()
    data = load_dataset(family.default_source)
    models = step.build(family.config(flavor="debug", overrides=overrides), data.info)
    return step, models, data.train[:16]


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    q = Independent(Normal(mu, (0.5 * logvar).exp()), 1)
    prior = Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
    torch.testing.assert_close(kl_to_standard_normal(mu, logvar), kl_divergence(q, prior))


def test_kl_term_is_the_encoders_kl_on_a_batch():
    step, models, batch = _build()
    vae = models["vae"].eval()
    mu, logvar = vae.encoder(batch)
    q = Independent(Normal(mu, (0.5 * logvar).exp()), 1)
    prior = Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
    _, terms = step.loss(models, batch, phase="vae")
    torch.testing.assert_close(terms["kl"], kl_divergence(q, prior).mean())


def test_elbo_is_minus_recon_plus_kl_and_the_loss_with_beta_one():
    step, models, batch = _build(beta=1.0)
    torch.manual_seed(1)
    loss, terms = step.loss(models, batch, phase="vae")
    torch.testing.assert_close(terms["elbo"], -(terms["recon"] + terms["kl"]))
    torch.testing.assert_close(loss, -terms["elbo"])


def test_beta_weights_only_the_loss_not_the_logged_elbo():
    step, models, batch = _build(beta=4.0)
    torch.manual_seed(1)
    loss, terms = step.loss(models, batch, phase="vae")
    torch.testing.assert_close(terms["elbo"], -(terms["recon"] + terms["kl"]))
    torch.testing.assert_close(loss, terms["recon"] + 4.0 * terms["kl"])


def test_discretised_likelihood_sums_to_one_over_the_grey_levels():
    levels = torch.linspace(-1, 1, 17, dtype=torch.float64)  # the digits' 17 grey levels
    for mean, log_scale in [(0.0, -2.0), (0.93, -4.0), (-0.4, 1.0), (1.0, -6.0)]:
        log_p = discretised_logistic_log_prob(
            levels,
            torch.full_like(levels, mean),
            torch.full_like(levels, log_scale),
            bin_width=2 / 16,
        )
        assert torch.isfinite(log_p).all()
        torch.testing.assert_close(log_p.exp().sum(), torch.tensor(1.0, dtype=torch.float64))


def test_discretised_likelihood_is_finite_with_finite_gradients_far_in_the_tails():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])
    mean = torch.tensor([1.0, 0.9, -1.0, -0.9, -1.0], requires_grad=True)
    log_p = discretised_logistic_log_prob(x, mean, torch.full_like(x, -7.0), bin_width=2 / 16)
    log_p.sum().backward()
    assert torch.isfinite(log_p).all() and torch.isfinite(mean.grad).all()


def test_preview_puts_samples_first_then_heldout_rows_above_their_reconstructions():
    step, models, _ = _build()
    heldout = load_dataset("builtin:digits").heldout[:16]
    for model in models.values():
        model.eval()
    with torch.no_grad():
        preview = step.preview(models, heldout)
        recons = models["vae"].reconstruct(heldout)
    assert preview.shape == (64, 1, 8, 8)
    torch.testing.assert_close(preview[32:40], heldout[:8])
    torch.testing.assert_close(preview[40:48], recons[:8])
    torch.testing.assert_close(preview[48:56], heldout[8:])
    torch.testing.assert_close(preview[56:64], recons[8:])

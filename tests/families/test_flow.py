"""The flow is exactly invertible, its log-det is the Jacobian's, and bits/dim is counted right."""

import math

import torch

from gentrain.data import load_dataset
from gentrain.families import all_families
from gentrain.families.flow.model import bits_per_dim, dequantise


def _build(dtype=torch.float64):
    family = all_families()["flow"]
    torch.manual_seed(0)
    step = family.make_step()
    data = load_dataset(family.default_source)
    models = step.build(family.config(flavor="debug", overrides={}), data.info)
    flow = models["flow"].to(dtype)
    # Couplings start as the identity; random last layers make the test see real couplings.
    for name, p in flow.named_parameters():
        if name.endswith(("net.4.weight", "net.4.bias")):
            torch.nn.init.normal_(p, std=0.3)
    return step, flow, data.train[:4].to(dtype)


def test_inverse_undoes_forward():
    _, flow, batch = _build()
    x = dequantise(batch, flow.bin_width)
    z, _ = flow(x)
    assert not torch.allclose(z, x)
    torch.testing.assert_close(flow.inverse(z), x, atol=1e-5, rtol=0)


def test_log_det_matches_autograd_jacobian():
    _, flow, batch = _build()
    x = dequantise(batch[:1], flow.bin_width)  # (1, 1, 8, 8): 64 dims

    def f(flat):
        return flow(flat.view_as(x))[0].flatten()

    jacobian = torch.autograd.functional.jacobian(f, x.flatten())  # (64, 64)
    sign, expected = torch.linalg.slogdet(jacobian)
    _, log_det = flow(x)
    assert sign > 0  # not required of a flow, but each layer here preserves orientation
    torch.testing.assert_close(log_det[0], expected, atol=1e-6, rtol=1e-6)


def test_samples_are_images_in_range():
    _, flow, _ = _build()
    flow.eval()
    samples = flow.sample(6)
    assert samples.shape == (6, 1, 8, 8)
    assert samples.min() >= -1 and samples.max() <= 1


def test_bits_per_dim_of_a_uniform_density_is_log2_of_the_levels():
    # A density uniform over the dequantised cube [-17/16, 17/16]^64 gives every one of the 17^64
    # images probability 17^-64: log2(17) bits per dim. Fake its (z, log_det) pair: z = 0 and
    # log_det = -log N(0; 0, I) - D log(17/8), so that log p(y) = -D log(2 * 17/16).
    dims = 64
    z = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    log_det = torch.tensor([0.5 * dims * math.log(2 * math.pi) - dims * math.log(17 / 8)])
    bpd = bits_per_dim(z, log_det.double(), bin_width=2 / 16)
    torch.testing.assert_close(bpd, torch.tensor([math.log2(17)], dtype=torch.float64))


def test_exported_generator_maps_noise_to_images():
    family = all_families()["flow"]
    step = family.make_step()
    data = load_dataset(family.default_source)
    models = step.build(family.config(flavor="debug", overrides={}), data.info)
    module, example = step.export(models)
    with torch.no_grad():
        images = module.eval()(example)
    assert images.shape == example.shape and images.abs().max() <= 1
    assert module.sample(3).shape == (3, 1, 8, 8)

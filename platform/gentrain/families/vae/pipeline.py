"""The VAE as two pipeline blocks: the encoder (with the reparameterisation) and the decoder
(with the likelihood, whose log-scale it owns)."""

import torch
from torch import nn

from gentrain import noise
from gentrain.families import PipelineForm
from gentrain.families.vae.model import VAE, discretised_logistic_log_prob


class Encode(nn.Module):
    def __init__(self, vae: VAE):
        super().__init__()
        self.encoder = vae.encoder

    def forward(self, x: torch.Tensor, eps: torch.Tensor):
        mu, logvar = self.encoder(x)
        z = mu + eps * (0.5 * logvar).exp()  # as VAE.forward draws it
        return z, mu, logvar, x


class Decode(nn.Module):
    def __init__(self, vae: VAE):
        super().__init__()
        self.decoder, self.log_scale, self.bin_width = vae.decoder, vae.log_scale, vae.bin_width

    def forward(self, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, x: torch.Tensor):
        log_px = discretised_logistic_log_prob(x, self.decoder(z), self.log_scale, self.bin_width)
        return -log_px.flatten(1).sum(1), mu, logvar


def vae_pipeline(vae: VAE, loss_of_parts) -> PipelineForm:
    """`loss_of_parts(recon, mu, logvar)` is the step's loss of VAE.forward's outputs."""

    def inputs(images: torch.Tensor):
        eps = noise.randn(
            (images.shape[0], vae.encoder.to_stats.out_features // 2), device=images.device
        )
        return (images, eps), images

    def loss(output, _target: torch.Tensor):
        return loss_of_parts(*output)

    return PipelineForm(blocks=[Encode(vae), Decode(vae)], inputs=inputs, loss=loss)

"""BERT's input corruption: select a share of the positions; of those, 80% become the mask token,
10% a random other token, 10% stay as they are. The loss is taken on the selected positions only."""

import torch

from gentrain import noise


def mask_tokens(
    ids: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    prob: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(corrupted inputs, selected positions as a bool mask), both (B, T), for `ids` (B, T); a row
    that selects nothing selects one random position. Draws from `generator` (on ids' device),
    else as training noise (gentrain.noise), the same number of draws whatever the ids."""
    batch, length = ids.shape

    def uniform() -> torch.Tensor:
        if generator is None:
            return noise.rand(ids.shape, device=ids.device)
        return torch.rand(ids.shape, generator=generator, device=ids.device)

    def integers(high: int, shape: tuple[int, ...]) -> torch.Tensor:
        if generator is None:
            return noise.randint(high, shape, device=ids.device)
        return torch.randint(high, shape, generator=generator, device=ids.device)

    selected = uniform() < prob
    fallback = integers(length, (batch,))
    empty = ~selected.any(1)
    selected[empty, fallback[empty]] = True
    action = uniform()
    random = integers(vocab_size - 1, ids.shape)
    random += (random >= mask_id).long()  # any token but the mask
    inputs = torch.where(selected & (action < 0.1), random, ids)
    inputs = torch.where(selected & (action >= 0.2), mask_id, inputs)
    return inputs, selected

"""BERT's input corruption: select a share of the positions; of those, 80% become the mask token,
10% a random other token, 10% stay as they are. The loss is taken on the selected positions only."""

import torch


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
    else from torch's global RNG, the same number of draws whatever the ids."""
    batch, length = ids.shape

    def uniform() -> torch.Tensor:
        return torch.rand(ids.shape, generator=generator, device=ids.device)

    selected = uniform() < prob
    fallback = torch.randint(length, (batch,), generator=generator, device=ids.device)
    empty = ~selected.any(1)
    selected[empty, fallback[empty]] = True
    action = uniform()
    random = torch.randint(vocab_size - 1, ids.shape, generator=generator, device=ids.device)
    random += (random >= mask_id).long()  # any token but the mask
    inputs = torch.where(selected & (action < 0.1), random, ids)
    inputs = torch.where(selected & (action >= 0.2), mask_id, inputs)
    return inputs, selected

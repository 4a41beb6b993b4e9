"""BERT's input corruption: select a share of the positions; of those, 80% become the mask token,
10% a random other token, 10% stay as they are. The loss is taken on the selected positions only."""

import itertools
import math

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


def _probs(model, ids: torch.Tensor, mask_id: int) -> torch.Tensor:
    """`model`'s predicted distributions (B, T, vocab) for `ids`, with no mass on the mask."""
    logits = model(ids).float()
    logits[..., mask_id] = float("-inf")
    return logits.softmax(-1)


def fill_masks(model, ids: torch.Tensor, *, mask_id: int) -> torch.Tensor:
    """`ids` (B, T) with each mask token replaced by `model`'s likeliest token, in one pass."""
    return torch.where(ids == mask_id, _probs(model, ids, mask_id).argmax(-1), ids)


def sample_by_unmasking(model, *, n: int, seq_len: int, mask_id: int, rounds: int) -> torch.Tensor:
    """n windows (n, seq_len) from a masked language model (ids -> logits): start fully masked;
    each round draws a token for every masked position and keeps the most confident draws, a
    fixed share of the window per round, so that later rounds condition on earlier ones."""
    device = next(model.parameters()).device
    ids = torch.full((n, seq_len), mask_id, dtype=torch.int64, device=device)
    rounds = max(1, min(rounds, seq_len))
    revealed = [math.ceil(seq_len * r / rounds) for r in range(rounds + 1)]
    for before, after in itertools.pairwise(revealed):  # positions revealed by each round
        probs = _probs(model, ids, mask_id)
        drawn = torch.multinomial(probs.flatten(0, 1), 1).view(ids.shape)  # (n, T)
        confidence = probs.gather(-1, drawn[..., None])[..., 0]
        confidence = confidence.masked_fill(ids != mask_id, -1.0)  # revealed: not again
        chosen = confidence.topk(after - before, dim=1).indices  # (n, after - before)
        ids.scatter_(1, chosen, drawn.gather(1, chosen))
    return ids


class Unmasking:
    """fill(ids) and sample(n) for a masked language model module (forward: ids -> logits) that
    has `mask_id`, `seq_len` and `sample_rounds`."""

    mask_id: int
    seq_len: int
    sample_rounds: int

    @torch.no_grad()
    def fill(self, ids: torch.Tensor) -> torch.Tensor:
        """`ids` (B, T) with each mask token replaced by the likeliest token, in one pass."""
        return fill_masks(self, ids, mask_id=self.mask_id)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """n windows (n, seq_len) by iterative unmasking (sample_by_unmasking)."""
        return sample_by_unmasking(
            self, n=n, seq_len=self.seq_len, mask_id=self.mask_id, rounds=self.sample_rounds
        )

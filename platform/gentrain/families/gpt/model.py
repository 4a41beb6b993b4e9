"""A decoder-only transformer (nanoGPT-like): token + learned position embeddings, a stack of
identical pre-LayerNorm blocks of causal self-attention and an MLP, a final LayerNorm and an LM head
tied to the token embedding.

A data window of seq_len tokens trains the model to predict its tokens 1..T-1 from 0..T-2, so the
model's context is seq_len - 1 tokens. Sampling starts from a fixed start token (the step picks the
newline token) and draws the rest of a window one token at a time.
"""

import torch
from torch import nn

from gentrain.families.gpt.config import GPTConfig
from gentrain.families.transformer import Block, Embeddings, draw_token, init_weights


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, *, vocab_size: int, context: int, start_id: int):
        super().__init__()
        assert 0 <= start_id < vocab_size, f"start token {start_id} not in [0, {vocab_size})"
        self.config, self.vocab_size = config, vocab_size
        self.context, self.start_id = context, start_id
        self.embed = Embeddings(vocab_size, context, config.dim, config.dropout)
        self.blocks = nn.ModuleList(
            Block(config.dim, config.heads, config.dropout, causal=True)
            for _ in range(config.layers)
        )
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, vocab_size, bias=False)
        self.apply(init_weights)
        self.head.weight = self.embed.tokens.weight  # tied input and output embeddings

    def forward(
        self, ids: torch.Tensor, *, cache: list[dict] | None = None, start: int = 0
    ) -> torch.Tensor:
        """Logits (B, T, vocab) of the token after each position of `ids` (B, T), T <= context.
        Generation passes each block's `cache` (Block.forward) and the position `start` of ids'
        first token."""
        if start + ids.shape[1] > self.context:
            raise ValueError(
                f"{start + ids.shape[1]} tokens: the model reads at most {self.context}"
            )
        x = self.embed(ids, start)  # (B, T, dim)
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache[i])
        return self.head(self.norm(x))

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float = 1.0,
    ) -> torch.Tensor:
        """`prompt_ids` (B, P), P >= 1, followed by `max_new_tokens` sampled tokens: (B, P + new).
        Each token is drawn given the last `context` tokens, by the config's temperature and top_k
        unless given. Call it in eval mode (no dropout)."""
        temperature = self.config.temperature if temperature is None else temperature
        top_k = self.config.top_k if top_k is None else top_k
        ids = prompt_ids
        cache = None  # each block's keys and values, while the whole sequence fits the context
        for _ in range(max_new_tokens):
            if ids.shape[1] > self.context:  # the window slides: every position shifts
                logits = self(ids[:, -self.context :])
            elif cache is None:
                cache = [{} for _ in self.blocks]
                logits = self(ids, cache=cache)
            else:
                logits = self(ids[:, -1:], cache=cache, start=ids.shape[1] - 1)
            logits = logits[:, -1].float()  # (B, vocab)
            drawn = draw_token(logits, temperature=temperature, top_k=top_k, top_p=top_p)
            ids = torch.cat([ids, drawn], dim=1)
        return ids

    def sample(self, n: int) -> torch.Tensor:
        """n windows (n, context + 1) of token ids: the start token, then sampled tokens."""
        device = self.embed.tokens.weight.device
        start = torch.full((n, 1), self.start_id, dtype=torch.int64, device=device)
        return self.generate(start, self.context)

"""Transformer parts that the text families share (plain torch): embeddings and pre-LayerNorm
blocks of multi-head self-attention, causal for GPT, bidirectional for BERT."""

import torch
import torch.nn.functional as F
from torch import nn


class Embeddings(nn.Module):
    """Token plus learned position embeddings, then dropout."""

    def __init__(self, vocab_size: int, max_len: int, dim: int, dropout: float):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim)
        self.positions = nn.Embedding(max_len, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:  # (B, T) -> (B, T, dim)
        """`start`: the position of ids' first token (generation feeds one token at a time)."""
        positions = torch.arange(start, start + ids.shape[1], device=ids.device)
        return self.dropout(self.tokens(ids) + self.positions(positions))


class Block(nn.Module):
    """x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, dim: int, heads: int, dropout: float, *, causal: bool):
        super().__init__()
        assert dim % heads == 0, f"dim {dim} is not a multiple of heads {heads}"
        self.heads, self.causal, self.dropout = heads, causal, dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout)
        )
        self.attention_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """x (B, T, dim) -> (B, T, dim). `cache` (causal generation): this block's keys and values
        of the positions before x, which x's own are added to; x is then one token, unless the
        cache is empty."""
        batch, length, dim = x.shape
        q, k, v = (
            part.view(batch, length, self.heads, dim // self.heads).transpose(1, 2)
            for part in self.qkv(self.norm1(x)).split(dim, dim=2)
        )  # each (B, heads, T, head_dim)
        causal = self.causal
        if cache is not None:
            if cache:
                assert length == 1, "after the prompt, a cached block reads one token at a time"
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
                causal = False  # the one new token sees every earlier position
            cache["k"], cache["v"] = k, v
        attended = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=causal
        )
        x = x + self.attention_dropout(self.proj(attended.transpose(1, 2).reshape(x.shape)))
        return x + self.mlp(self.norm2(x))


def init_weights(module: nn.Module) -> None:
    """GPT-2's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class NormHead(nn.Module):
    """A transformer's last pipeline block: the final norm, then the output head."""

    def __init__(self, norm: nn.Module, head: nn.Module):
        super().__init__()
        self.norm, self.head = norm, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x))


def draw_token(
    logits: torch.Tensor, *, temperature: float, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """One token per row of `logits` (B, vocab): drawn at `temperature` from the `top_k` likeliest
    (0: all) and the smallest set whose probability reaches `top_p` (nucleus sampling). (B, 1)"""
    logits = logits / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        before = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1)  # mass of the likelier
        ordered = ordered.masked_fill(before >= top_p, float("-inf"))  # the likeliest stays
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)
    return torch.multinomial(logits.softmax(-1), 1)

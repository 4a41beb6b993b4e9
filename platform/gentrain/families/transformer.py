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

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, dim)
        positions = torch.arange(ids.shape[1], device=ids.device)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = (
            part.view(batch, length, self.heads, dim // self.heads).transpose(1, 2)
            for part in self.qkv(self.norm1(x)).split(dim, dim=2)
        )
        attended = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=self.causal
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

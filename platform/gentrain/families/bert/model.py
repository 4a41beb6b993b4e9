"""An encoder-only transformer (BERT-like) trained as a masked language model: token + learned
position embeddings, a stack of identical blocks of bidirectional self-attention and an MLP
(post-LayerNorm as in BERT, or pre-LayerNorm), and an MLM head (dense, GELU, LayerNorm) whose
decoder is the token embedding.

The model reads one window of seq_len tokens, some of them the mask token, and predicts every
position's token; `fill` and `sample` never emit the mask token.
"""

import torch
import torch.nn.functional as F
from torch import nn

from gentrain.families.bert.config import BERTConfig
from gentrain.families.bert.masking import Unmasking


class Embeddings(nn.Module):
    """Token plus learned position embeddings; post-LN models normalise them (as BERT does)."""

    def __init__(self, config: BERTConfig, *, vocab_size: int, seq_len: int):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, config.dim)
        self.positions = nn.Embedding(seq_len, config.dim)
        self.norm = nn.LayerNorm(config.dim) if config.norm == "post" else nn.Identity()
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, dim)
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.dropout(self.norm(self.tokens(ids) + self.positions(positions)))


class Block(nn.Module):
    """Bidirectional multi-head self-attention then an MLP, each a residual branch."""

    def __init__(self, config: BERTConfig):
        super().__init__()
        assert config.dim % config.heads == 0, f"dim {config.dim} % heads {config.heads} != 0"
        self.heads, self.dropout, self.pre_norm = config.heads, config.dropout, config.norm == "pre"
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)
        self.mlp = nn.Sequential(
            nn.Linear(config.dim, 4 * config.dim), nn.GELU(), nn.Linear(4 * config.dim, config.dim)
        )
        self.norm1, self.norm2 = nn.LayerNorm(config.dim), nn.LayerNorm(config.dim)
        self.residual_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, dim) -> (B, T, dim)
        if self.pre_norm:
            x = x + self.residual_dropout(self.attend(self.norm1(x)))
            return x + self.residual_dropout(self.mlp(self.norm2(x)))
        x = self.norm1(x + self.residual_dropout(self.attend(x)))
        return self.norm2(x + self.residual_dropout(self.mlp(x)))

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = (  # (B, heads, T, dim / heads) each
            part.view(batch, length, self.heads, dim // self.heads).transpose(1, 2)
            for part in self.qkv(x).split(dim, dim=2)
        )
        attended = F.scaled_dot_product_attention(  # every position sees every other: no mask
            q, k, v, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(attended.transpose(1, 2).reshape(x.shape))


class MLMHead(nn.Module):
    """Hidden states -> token logits; the decoder's weight is the token embedding's."""

    def __init__(self, config: BERTConfig, tokens: nn.Embedding):
        super().__init__()
        self.transform = nn.Sequential(
            nn.Linear(config.dim, config.dim), nn.GELU(), nn.LayerNorm(config.dim)
        )
        self.decoder = nn.Linear(config.dim, tokens.num_embeddings)
        self.decoder.weight = tokens.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, dim) -> (B, T, vocab)
        return self.decoder(self.transform(hidden))


class BERT(Unmasking, nn.Module):
    def __init__(self, config: BERTConfig, *, vocab_size: int, seq_len: int, mask_id: int):
        super().__init__()
        assert 0 <= mask_id < vocab_size, f"mask token {mask_id} not in [0, {vocab_size})"
        self.config, self.seq_len, self.mask_id = config, seq_len, mask_id
        self.embed = Embeddings(config, vocab_size=vocab_size, seq_len=seq_len)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        # Pre-LN leaves the residual stream unnormalised: one LayerNorm closes the stack.
        self.norm = nn.LayerNorm(config.dim) if config.norm == "pre" else nn.Identity()
        self.head = MLMHead(config, self.embed.tokens)
        self.apply(_init_weights)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab) of the token at each position of `ids` (B, T), T <= seq_len."""
        assert ids.shape[1] <= self.seq_len, f"{ids.shape[1]} tokens > seq_len {self.seq_len}"
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    @property
    def sample_rounds(self) -> int:
        return self.config.sample_rounds


def _init_weights(module: nn.Module) -> None:
    """BERT's initialisation: N(0, 0.02) weights, zero biases (LayerNorms keep ones and zeros)."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)

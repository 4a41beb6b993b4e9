"""GPT's training step: next-token cross-entropy; held-out perplexity; text continuations."""

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from gentrain.families import DataInfo, Decoding, PipelineForm
from gentrain.families.gpt.config import GPTConfig
from gentrain.families.gpt.model import GPT
from gentrain.families.transformer import NormHead


class GPTStep:
    network = "gpt"  # the one network, updated by the one phase
    phases = (network,)
    decode: Callable[[list[int]], str] = staticmethod(str)  # set by build
    seq_len = 0

    def build(self, config: GPTConfig, data: DataInfo) -> dict[str, nn.Module]:
        assert data.vocab_size and data.decode, "gpt trains on text"
        self.decode, self.seq_len = data.decode, data.shape[0]
        start_id = newline_id(data.decode, data.vocab_size)
        model = GPT(config, vocab_size=data.vocab_size, context=self.seq_len - 1, start_id=start_id)
        return {"gpt": model}

    def loss(
        self, models: Mapping[str, nn.Module], batch: torch.Tensor, *, phase: str
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert phase == self.network, phase
        return next_token_loss(models[self.network], batch), {}

    def pipeline(self, models: Mapping[str, nn.Module], *, phase: str) -> PipelineForm:
        """Embeddings, each block, then the norm and head (tied to the embeddings)."""
        gpt = models["gpt"]

        def inputs(windows: torch.Tensor) -> tuple[tuple[torch.Tensor], torch.Tensor]:
            return (windows[:, :-1],), windows[:, 1:]

        def loss(logits: torch.Tensor, targets: torch.Tensor):
            return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()), {}

        blocks = [gpt.embed, *gpt.blocks, NormHead(gpt.norm, gpt.head)]
        return PipelineForm(blocks=blocks, inputs=inputs, loss=loss)

    def sample(self, models: Mapping[str, nn.Module], n: int) -> torch.Tensor:
        return models[self.network].sample(n)

    def preview(self, models: Mapping[str, nn.Module], heldout: torch.Tensor) -> list[str]:
        """Four held-out prompts (half a window, spread over the held-out text), each with the
        held-out text that follows it and the model's continuation to a whole window, then four
        unconditional samples."""
        gpt = models[self.network]
        half = self.seq_len // 2
        picks = torch.linspace(0, len(heldout) - 1, 4).long().unique()
        prompts = heldout[picks, :half].to(next(gpt.parameters()).device)
        wholes = gpt.generate(prompts, self.seq_len - half)
        texts = [
            f"[prompt]\n{self.decode(whole[:half].tolist())}\n"
            f"[reference]\n{self.decode(reference.tolist())}\n"
            f"[model]\n{self.decode(whole[half:].tolist())}"
            for whole, reference in zip(wholes, heldout[picks, half:], strict=True)
        ]
        return texts + [f"[sample]\n{self.decode(ids.tolist())}" for ids in self.sample(models, 4)]

    def answer(
        self, models: Mapping[str, nn.Module], prompts: torch.Tensor, decoding: Decoding
    ) -> torch.Tensor:
        """The tokens the model writes after each of `prompts` (B, P): (B, max_new_tokens)."""
        whole = models[self.network].generate(
            prompts,
            decoding.max_new_tokens,
            temperature=decoding.temperature,
            top_k=decoding.top_k,
            top_p=decoding.top_p,
        )
        return whole[:, prompts.shape[1] :]

    def evaluate(self, models: Mapping[str, nn.Module], heldout: torch.Tensor) -> dict[str, float]:
        """Perplexity: exp of the mean next-token cross-entropy over every predicted held-out token
        (tokens 1..T-1 of each window)."""
        gpt = models[self.network]
        device = next(gpt.parameters()).device
        total = 0.0
        for windows in heldout.split(64):
            total += next_token_loss(gpt, windows.to(device), reduction="sum").item()
        count = heldout.shape[0] * (heldout.shape[1] - 1)
        return {"perplexity": float(torch.tensor(total / count, dtype=torch.float64).exp())}

    def export(self, models: Mapping[str, nn.Module]) -> tuple[nn.Module, torch.Tensor]:
        # The GPT itself: forward(ids) -> logits, sample(n) and generate(prompt_ids, new_tokens).
        gpt = models[self.network]
        example = torch.full((2, gpt.context), gpt.start_id, dtype=torch.int64)
        return gpt, example.to(next(gpt.parameters()).device)


def next_token_loss(
    model: nn.Module, windows: torch.Tensor, *, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of predicting tokens 1..T-1 of `windows` (B, T) from tokens 0..T-2."""
    logits = model(windows[:, :-1]).float()  # (B, T - 1, vocab)
    return F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten(), reduction=reduction)


def newline_id(decode: Callable[[list[int]], str], vocab_size: int) -> int:
    """Where sampling starts: the token that decodes to a newline (10 in the byte tokenizer; the
    byte-level BPE's alphabet has one too), so that samples read as text from a line's start;
    token 0 for a vocabulary without one."""
    return next((i for i in range(vocab_size) if decode([i]) == "\n"), 0)

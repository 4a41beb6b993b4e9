"""BERT's training step: masked-language-model cross-entropy on the selected positions; held-out
MLM perplexity and accuracy under one fixed masking; masked-token fills as the preview."""

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from gentrain.families import MASK_SHOWN, DataInfo, Decoding, PipelineForm
from gentrain.families.bert.config import BERTConfig
from gentrain.families.bert.masking import mask_tokens
from gentrain.families.bert.model import BERT
from gentrain.families.transformer import NormHead

# Held-out masking comes from a private generator with this seed, so every evaluation predicts
# the same positions from the same corrupted inputs: scores are comparable across steps.
EVAL_MASK_SEED = 0
IGNORED = -100  # cross-entropy's ignore_index: positions the MLM loss skips


class BERTStep:
    network = "bert"  # the one network, updated by the one phase
    phases = (network,)
    decode: Callable[[list[int]], str] = staticmethod(str)  # set by build
    mask_id = vocab_size = seq_len = 0
    mask_prob = 0.15

    def build(self, config: BERTConfig, data: DataInfo) -> dict[str, nn.Module]:
        assert data.vocab_size and data.decode and data.mask_id is not None, "bert trains on text"
        self.decode, self.mask_id, self.vocab_size = data.decode, data.mask_id, data.vocab_size
        self.seq_len, self.mask_prob = data.shape[0], config.mask_prob
        model = BERT(config, vocab_size=self.vocab_size, seq_len=self.seq_len, mask_id=self.mask_id)
        return {"bert": model}

    def loss(
        self, models: Mapping[str, nn.Module], batch: torch.Tensor, *, phase: str
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert phase == self.network, phase
        inputs, selected = self.mask(batch)
        logits = models[self.network](inputs)  # (B, T, vocab)
        return masked_loss(logits, torch.where(selected, batch, IGNORED)), {}

    def pipeline(self, models: Mapping[str, nn.Module], *, phase: str) -> PipelineForm:
        """Embeddings, each block, then the norm and MLM head; the target holds the original
        token at the selected positions and IGNORED elsewhere."""
        bert = models["bert"]

        def inputs(windows: torch.Tensor) -> tuple[tuple[torch.Tensor], torch.Tensor]:
            corrupted, selected = self.mask(windows)
            return (corrupted,), torch.where(selected, windows, IGNORED)

        def loss(logits: torch.Tensor, targets: torch.Tensor):
            return masked_loss(logits, targets), {}

        blocks = [bert.embed, *bert.blocks, NormHead(bert.norm, bert.head)]
        return PipelineForm(blocks=blocks, inputs=inputs, loss=loss)

    def sample(self, models: Mapping[str, nn.Module], n: int) -> torch.Tensor:
        return models[self.network].sample(n)

    def preview(self, models: Mapping[str, nn.Module], heldout: torch.Tensor) -> list[str]:
        """Four held-out windows, spread over the held-out text: as written, with the evaluation's
        selected positions masked (shown as ▯), and as the model fills them in."""
        bert = models[self.network]
        _, selected = self.mask(heldout, generator=_eval_generator())
        picks = torch.linspace(0, len(heldout) - 1, 4).long().unique()
        windows, selected = heldout[picks], selected[picks]
        masked = torch.where(selected, self.mask_id, windows)
        filled = bert.fill(masked.to(next(bert.parameters()).device)).cpu()
        return [
            f"[original]\n{self.decode(window.tolist())}\n[masked]\n{self._show(shown.tolist())}\n"
            f"[filled]\n{self.decode(fill.tolist())}"
            for window, shown, fill in zip(windows, masked, filled, strict=True)
        ]

    def answer(
        self, models: Mapping[str, nn.Module], prompts: torch.Tensor, decoding: Decoding
    ) -> torch.Tensor:
        """The likeliest token in place of each mask token of `prompts` (B, T), in one pass
        (decoding's sampling settings do not apply): (B, masked per prompt)."""
        masked = prompts == self.mask_id
        return models[self.network].fill(prompts)[masked].view(len(prompts), -1)

    def evaluate(self, models: Mapping[str, nn.Module], heldout: torch.Tensor) -> dict[str, float]:
        """Over the held-out windows, masked as in training but by the fixed generator:
        perplexity = exp(mean cross-entropy) and mlm_accuracy = share predicted right (argmax),
        both over the selected positions."""
        bert = models[self.network]
        device = next(bert.parameters()).device
        inputs, selected = self.mask(heldout, generator=_eval_generator())  # on the CPU
        total, correct, count = 0.0, 0, 0
        for ids, chosen, targets in zip(
            inputs.split(64), selected.split(64), heldout.split(64), strict=True
        ):
            chosen, targets = chosen.to(device), targets.to(device)
            logits = bert(ids.to(device))[chosen].float()  # (selected, vocab)
            targets = targets[chosen]
            total += F.cross_entropy(logits, targets, reduction="sum").item()
            correct += (logits.argmax(-1) == targets).sum().item()
            count += len(targets)
        perplexity = torch.tensor(total / count, dtype=torch.float64).exp()
        return {"perplexity": float(perplexity), "mlm_accuracy": correct / count}

    def export(self, models: Mapping[str, nn.Module]) -> tuple[nn.Module, torch.Tensor]:
        # The BERT itself: forward(ids) -> logits, fill(ids) and sample(n).
        bert = models[self.network]
        example = torch.full((2, self.seq_len), self.mask_id, dtype=torch.int64)
        return bert, example.to(next(bert.parameters()).device)

    def mask(
        self, ids: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(corrupted inputs, selected positions) for `ids` (B, T): see masking.mask_tokens."""
        return mask_tokens(
            ids,
            mask_id=self.mask_id,
            vocab_size=self.vocab_size,
            prob=self.mask_prob,
            generator=generator,
        )

    def _show(self, ids: list[int]) -> str:
        """Decoded text with ▯ for each mask token (runs between masks decoded separately)."""
        runs: list[list[int]] = [[]]
        for token in ids:
            if token == self.mask_id:
                runs.append([])
            else:
                runs[-1].append(token)
        return MASK_SHOWN.join(self.decode(run) for run in runs)


def masked_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The cross-entropy of each window's selected positions (targets IGNORED elsewhere),
    averaged within the window, then over the windows: each window weighs the same wherever
    it is trained, so 1 worker, 2 workers and any micro-batching give the same loss."""
    per_token = F.cross_entropy(
        logits.float().transpose(1, 2), targets, ignore_index=IGNORED, reduction="none"
    )  # (B, T), 0 where IGNORED
    counts = (targets != IGNORED).sum(1).clamp(min=1)  # every window selects one at least
    return (per_token.sum(1) / counts).mean()


def _eval_generator() -> torch.Generator:
    return torch.Generator().manual_seed(EVAL_MASK_SEED)

"""hf_masked_lm: any transformers AutoModelForMaskedLM, trained as gentrain's bert is (80/10/10
masking, held-out perplexity and MLM accuracy, masked held-out text filled in as the preview)."""

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from gentrain.families import DataInfo, PipelineForm
from gentrain.families.bert.masking import Unmasking
from gentrain.families.bert.step import IGNORED, BERTStep, masked_loss
from gentrain.families.huggingface.config import TransformersConfig
from gentrain.families.huggingface.transformers_lm import (
    build_model,
    pipeline_blocks,
    save_pretrained,
)


class MaskedLM(Unmasking, nn.Module):
    """A transformers masked LM as gentrain's text families use one: forward(ids) -> logits,
    fill(ids) and sample(n)."""

    sample_rounds = 8  # iterative unmasking: a window revealed in this many rounds

    def __init__(self, hf: nn.Module, *, seq_len: int, mask_id: int):
        super().__init__()
        self.hf, self.seq_len, self.mask_id = hf, seq_len, mask_id

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, vocab)
        return self.hf(input_ids=ids).logits


class MaskedLMStep(BERTStep):
    network = "lm"
    phases = (network,)
    tokenizer: str | None = None  # the data's, saved with the model

    def build(self, config: TransformersConfig, data: DataInfo) -> dict[str, nn.Module]:
        assert data.vocab_size and data.decode and data.mask_id is not None, "needs masked text"
        self.decode, self.mask_id, self.vocab_size = data.decode, data.mask_id, data.vocab_size
        self.seq_len, self.tokenizer = data.shape[0], data.tokenizer
        hf = build_model(config, vocab_size=data.vocab_size, kind="masked")
        self.vocab_size = hf.config.vocab_size  # a pretrained model's (the tokenizer's fit in it)
        return {self.network: MaskedLM(hf, seq_len=self.seq_len, mask_id=self.mask_id)}

    def pipeline(self, models: Mapping[str, nn.Module], *, phase: str) -> PipelineForm:
        """The embeddings, each of the model's own encoder layers, then its MLM head; the target
        holds the original token at the selected positions and IGNORED elsewhere."""

        def inputs(windows: torch.Tensor) -> tuple[tuple[torch.Tensor], torch.Tensor]:
            corrupted, selected = self.mask(windows)
            return (corrupted,), torch.where(selected, windows, IGNORED)

        def loss(logits: torch.Tensor, targets: torch.Tensor):
            return masked_loss(logits, targets), {}

        blocks = pipeline_blocks(models[self.network].hf)
        return PipelineForm(blocks=blocks, inputs=inputs, loss=loss)

    def export_files(self, models: Mapping[str, nn.Module], directory: Path) -> None:
        save_pretrained(models[self.network].hf, directory, self.tokenizer)

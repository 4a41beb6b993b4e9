"""hf_causal_lm: any transformers AutoModelForCausalLM, trained as gentrain's gpt is (next-token
cross-entropy, held-out perplexity, prompts continued and samples as the preview)."""

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gentrain.families import DataInfo, PipelineForm
from gentrain.families.gpt.step import GPTStep, newline_id
from gentrain.families.huggingface.config import TransformersConfig
from gentrain.families.huggingface.transformers_lm import (
    build_model,
    pipeline_blocks,
    save_pretrained,
)


class CausalLM(nn.Module):
    """A transformers causal LM as gentrain's text families use one: forward(ids) -> logits,
    generate(prompt_ids, new_tokens) and sample(n)."""

    def __init__(self, hf: nn.Module, *, context: int, start_id: int):
        super().__init__()
        self.hf, self.context, self.start_id = hf, context, start_id

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, vocab)
        return self.hf(input_ids=ids, use_cache=False).logits

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
    ) -> torch.Tensor:
        """`prompt_ids` (B, P) and `max_new_tokens` tokens sampled after them (transformers'
        generate; by default from the whole distribution): (B, P + new)."""
        return self.hf.generate(
            input_ids=prompt_ids,
            attention_mask=torch.ones_like(prompt_ids),
            do_sample=True,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            pad_token_id=self.start_id,
        )

    def sample(self, n: int) -> torch.Tensor:
        """n windows (n, context + 1): the start token, then sampled tokens."""
        device = next(self.parameters()).device
        start = torch.full((n, 1), self.start_id, dtype=torch.int64, device=device)
        return self.generate(start, self.context)


class CausalLMStep(GPTStep):
    network = "lm"
    phases = (network,)
    tokenizer: str | None = None  # the data's, saved with the model

    def build(self, config: TransformersConfig, data: DataInfo) -> dict[str, nn.Module]:
        assert data.vocab_size and data.decode, "hf_causal_lm trains on text"
        self.decode, self.seq_len, self.tokenizer = data.decode, data.shape[0], data.tokenizer
        hf = build_model(config, vocab_size=data.vocab_size, kind="causal")
        bos = hf.config.bos_token_id
        start = bos if bos is not None else newline_id(data.decode, data.vocab_size)
        return {self.network: CausalLM(hf, context=self.seq_len - 1, start_id=start)}

    def pipeline(self, models: Mapping[str, nn.Module], *, phase: str) -> PipelineForm:
        """The embeddings, each of the model's own decoder layers, then its norm and head."""

        def inputs(windows: torch.Tensor) -> tuple[tuple[torch.Tensor], torch.Tensor]:
            return (windows[:, :-1],), windows[:, 1:]

        def loss(logits: torch.Tensor, targets: torch.Tensor):
            return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()), {}

        blocks = pipeline_blocks(models[self.network].hf)
        return PipelineForm(blocks=blocks, inputs=inputs, loss=loss)

    def export_files(self, models: Mapping[str, nn.Module], directory: Path) -> None:
        save_pretrained(models[self.network].hf, directory, self.tokenizer)

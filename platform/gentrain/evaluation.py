"""What rank 0 does at each evaluation: the family's held-out metrics, FID / IS of fresh samples
for image families, the text quality of a text family's answers, and a preview (a sample grid or
texts), all logged at the step."""

from collections.abc import Callable

import torch

from gentrain.data import Data
from gentrain.families import FamilyStep, get_family
from gentrain.metrics.text import ANSWERS
from gentrain.spec import JobSpec
from gentrain.tracking import RunLogger

EVAL_SEED = 1234  # every evaluation draws the same noise and samples from the same stream


def load_ahead(spec: JobSpec) -> None:
    """Start loading, in the background, what rank 0's evaluations need and take seconds to
    load (the text metrics' sentence encoder): the first evaluation then finds it loaded."""
    from gentrain.metrics.text import needs_encoder

    if needs_encoder(spec.text_metrics, judged=bool(spec.eval.judge)):
        from gentrain.metrics.text_quality import load_encoder_ahead

        load_encoder_ahead()


class Evaluation:
    def __init__(
        self,
        spec: JobSpec,
        *,
        step_fn: FamilyStep,
        data: Data,
        logger: RunLogger | None,
        device: torch.device,
        beat: Callable[[], None] = lambda: None,
    ):
        """`beat`: called as the evaluation progresses (the stall watchdog follows it)."""
        self.spec, self.step_fn, self.data, self.logger = spec, step_fn, data, logger
        self.device, self.beat = device, beat
        self.image_quality = None  # built at the first evaluation
        self.text_quality = None  # likewise
        self._heldout = None  # read at the first evaluation

    def run(self, models: dict[str, torch.nn.Module], step: int, *, scored: bool = True) -> dict:
        """Evaluate `models` (whole, in rank 0's process) at `step`; log and return the scores.
        Unscored: the preview only (the untrained model's, at step 0)."""
        spec = self.spec
        for model in models.values():
            model.eval()
        image_quality = self._image_quality() if spec.image_features and scored else None
        answers = None  # the table of the answers to the text-quality questions
        cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            torch.manual_seed(EVAL_SEED)
            preview = self.step_fn.preview(models, self.heldout())
            self.beat()
            scores = self.step_fn.evaluate(models, self.heldout()) if scored else {}
            self.beat()
            if image_quality is not None:
                samples = _sample_in_chunks(self.step_fn, models, spec.eval.num_samples, self.beat)
                scores.update(image_quality.compute(samples))
                self.beat()
            if scored and spec.text_metrics:
                found, answers = self._text_quality(models, step)
                scores.update(found)
                self.beat()
        for model in models.values():
            model.train()
        if isinstance(preview, torch.Tensor):
            self.logger.log_image_grid(preview, step=step)
        else:
            self.logger.log_texts(preview, step=step)
        if answers:
            self.logger.log_table(answers, path=ANSWERS, step=step)
        scores = {
            name: value
            for name, value in scores.items()
            if name in spec.eval_metrics
            or name.removesuffix("_raw") in spec.text_metrics
            or name == "judge_failures"
        }
        self.logger.log_metrics(scores, step=step)
        return scores

    def heldout(self) -> torch.Tensor:
        """The first eval.max_examples held-out examples (read once)."""
        if self._heldout is None:
            self._heldout = self.data.stream.heldout(self.spec.eval.max_examples)
        return self._heldout

    def _image_quality(self):
        if self.image_quality is None:
            from gentrain.metrics import ImageQuality, load_feature_extractor

            self.image_quality = ImageQuality(
                extractor=load_feature_extractor(self.spec.image_features),
                real_images=self.heldout(),
            )
        return self.image_quality

    def _text_quality(self, models: dict[str, torch.nn.Module], step: int):
        """The text-quality metrics of the model's answers, and their table (metrics/text.py)."""
        evaluation = self.spec.eval
        if self.text_quality is None:
            from gentrain.data import questions
            from gentrain.metrics.judge import Judges
            from gentrain.metrics.text import TextQuality

            family = get_family(self.spec.model.family)
            tokenizer = self.data.stream.examples.tokenizer
            judges = Judges(evaluation.judge, self.spec.text_metrics) if evaluation.judge else None
            self.text_quality = TextQuality(
                metrics=self.spec.text_metrics,
                heldout=self.heldout(),
                encode=tokenizer.encode,
                decode=tokenizer.decode,
                count=evaluation.num_answers,
                max_new_tokens=evaluation.decoding.max_new_tokens,
                questions=questions.read(evaluation.dataset) if evaluation.dataset else None,
                fill_mask=self.data.info.mask_id if family.answers == "fill" else None,
                judges=judges,
            )
        torch.manual_seed(evaluation.decoding.seed)
        found, table = self.text_quality.compute(
            lambda prompts: self.step_fn.answer(models, prompts, evaluation.decoding),
            device=self.device,
            step=step,
        )
        if found.get("judge_failures"):
            self.logger.warn(
                f"eval.judge {evaluation.judge} gave no score for {found['judge_failures']:.0f} "
                f"answer-metric pairs at step {step}; the first: "
                f"{self.text_quality.judges.first_error}"
            )
        return found, table


def _sample_in_chunks(
    step_fn: FamilyStep, models, n: int, beat: Callable[[], None], chunk: int = 256
) -> torch.Tensor:
    parts = []
    for done in range(0, n, chunk):
        parts.append(step_fn.sample(models, min(chunk, n - done)))
        beat()
    return torch.cat(parts).float().cpu()

"""BERT: the 80/10/10 masking and the loss on selected positions, bidirectional attention, the fixed
held-out masking and the metrics it gives, fills and samples that never emit the mask token."""

import pickle

import pytest
import torch
import torch.nn.functional as F

from gentrain import spec
from gentrain.data import load_dataset
from gentrain.errors import SpecError
from gentrain.families import all_families
from gentrain.families.bert.masking import mask_tokens


@pytest.fixture(scope="module")
def data():
    return load_dataset(all_families()["bert"].default_source)


def _build(data, flavor="debug", **overrides):
    family = all_families()["bert"]
    torch.manual_seed(0)
    step = family.make_step()
    models = step.build(family.config(flavor=flavor, overrides=overrides), data.info)
    return step, models["bert"].eval()


def test_masking_selects_15_percent_then_masks_80_randomises_10_keeps_10():
    torch.manual_seed(0)
    ids = torch.randint(0, 256, (512, 128))  # 65k tokens; 256 is the mask
    inputs, selected = mask_tokens(ids, mask_id=256, vocab_size=257, prob=0.15)
    assert selected.float().mean().item() == pytest.approx(0.15, abs=0.005)
    assert torch.equal(inputs[~selected], ids[~selected])
    chosen, original = inputs[selected], ids[selected]
    masked = chosen == 256
    kept = chosen == original
    randomised = ~masked & ~kept  # a random token can equal the original (1 in 256): "kept"
    assert masked.float().mean().item() == pytest.approx(0.8, abs=0.015)
    assert randomised.float().mean().item() == pytest.approx(0.1 * 255 / 256, abs=0.01)
    assert kept.float().mean().item() == pytest.approx(0.1 + 0.1 / 256, abs=0.01)
    assert chosen[randomised].max() < 256


def test_masking_selects_at_least_one_position_per_row():
    ids = torch.randint(0, 256, (200, 8))
    _, selected = mask_tokens(ids, mask_id=256, vocab_size=257, prob=1e-6)
    assert (selected.sum(1) == 1).all()


def test_random_replacements_are_never_the_mask_token_wherever_it_sits():
    ids = torch.zeros(64, 64, dtype=torch.int64)
    inputs, selected = mask_tokens(ids, mask_id=1, vocab_size=3, prob=0.5)
    # random draws are 0 or 2: only the 80% masked read 1
    assert (inputs[selected] == 1).float().mean().item() == pytest.approx(0.8, abs=0.03)
    assert (inputs[selected] == 2).any() and not (inputs[~selected] != 0).any()


def test_loss_is_the_cross_entropy_on_the_selected_positions_per_window(data):
    """Each window's mean cross-entropy over its own selected positions, averaged over the
    windows: a window weighs the same whichever worker trains it."""
    step, bert = _build(data)
    batch = data.train[:8]
    torch.manual_seed(1)
    loss, terms = step.loss({"bert": bert}, batch, phase="bert")
    torch.manual_seed(1)
    inputs, selected = step.mask(batch)
    logits = bert(inputs)
    per_window = [
        F.cross_entropy(logits[i][selected[i]], batch[i][selected[i]]) for i in range(len(batch))
    ]
    torch.testing.assert_close(loss, torch.stack(per_window).mean())
    assert terms == {}
    assert 0 < selected.sum() < selected.numel() * 0.3


def test_a_later_token_changes_the_logits_of_earlier_positions(data):
    _, bert = _build(data)
    ids = data.heldout[:2].clone()
    changed = ids.clone()
    changed[:, 40:] = (changed[:, 40:] + 1) % 256
    with torch.no_grad():
        before, after = bert(ids), bert(changed)
    assert not torch.allclose(after[:, :40], before[:, :40])  # unlike GPT: attention sees ahead


def test_a_uniform_model_has_the_vocabulary_size_as_perplexity(data):
    step, bert = _build(data)
    with torch.no_grad():
        bert.head.decoder.weight.zero_()  # tied to the token embedding: every logit is its bias
        bert.head.decoder.bias.zero_()
        scores = step.evaluate({"bert": bert}, data.heldout[:100])
    assert scores["perplexity"] == pytest.approx(data.info.vocab_size, rel=1e-5)
    assert isinstance(scores["mlm_accuracy"], float)


def test_evaluation_masks_the_same_positions_every_time_and_leaves_the_global_rng(data):
    step, bert = _build(data)
    heldout = data.heldout[:64]
    with torch.no_grad():
        torch.manual_seed(1)
        first = step.evaluate({"bert": bert}, heldout)
        state = torch.get_rng_state()
        torch.manual_seed(2)
        second = step.evaluate({"bert": bert}, heldout)
        torch.manual_seed(1)
        step.evaluate({"bert": bert}, heldout)
        assert torch.equal(torch.get_rng_state(), state)
    assert first == second
    assert first["perplexity"] > 1 and 0 <= first["mlm_accuracy"] <= 1


def test_fills_and_samples_never_emit_the_mask_token(data):
    step, bert = _build(data)
    mask_id = data.info.mask_id
    with torch.no_grad():
        bert.head.decoder.bias[mask_id] = 100.0  # the model would rather say <mask> than anything
    ids = data.heldout[:4].clone()
    masked = ids.clone()
    masked[:, ::3] = mask_id
    filled = bert.fill(masked)
    assert (filled != mask_id).all()
    assert torch.equal(filled[:, 1::3], ids[:, 1::3])  # unmasked positions pass through
    torch.manual_seed(0)
    samples = step.sample({"bert": bert}, 3)
    assert samples.shape == (3, data.info.shape[0]) and (samples != mask_id).all()
    assert 0 <= samples.min() and samples.max() < data.info.vocab_size


def test_preview_shows_held_out_windows_masked_and_filled(data):
    step, bert = _build(data)
    with torch.no_grad():
        texts = step.preview({"bert": bert}, data.heldout)
    assert len(texts) == 4
    assert texts[0].startswith("[original]\n" + data.info.decode(data.heldout[0].tolist()))
    assert all("\n[masked]\n" in text and "▯" in text and "\n[filled]\n" in text for text in texts)


def test_post_norm_puts_layernorm_after_each_residual_add_and_trains(data):
    step, bert = _build(data, norm="post")
    assert isinstance(bert.norm, torch.nn.Identity)
    assert isinstance(bert.embed.norm, torch.nn.LayerNorm)
    bert.train()
    optimizer = torch.optim.AdamW(bert.parameters(), lr=1e-3)
    batch = data.train[:8]
    losses = []
    for _ in range(8):
        torch.manual_seed(1)
        loss, _ = step.loss({"bert": bert}, batch, phase="bert")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_an_unknown_norm_is_a_spec_error_naming_the_key():
    raw = {"name": "b", "model": {"family": "bert", "overrides": {"norm": "middle"}}}
    raw["data"] = {"source": "builtin:python_docs"}
    with pytest.raises(SpecError, match="model.overrides.norm"):
        spec.validate(raw)


def test_blocks_are_identical_and_the_decoder_is_the_token_embedding(data):
    _, bert = _build(data)
    assert isinstance(bert.blocks, torch.nn.ModuleList) and len(bert.blocks) == 2
    shapes = [[p.shape for p in block.parameters()] for block in bert.blocks]
    assert all(s == shapes[0] for s in shapes)
    assert bert.head.decoder.weight is bert.embed.tokens.weight


def test_base_flavor_is_bert_base_sized(data):
    with torch.device("meta"):  # shapes only: nothing allocated
        _, bert = _build(data, flavor="base")
    assert len(bert.blocks) == 12 and bert.config.dim == 768
    assert 80e6 < sum(p.numel() for p in bert.parameters()) < 120e6


def test_exported_module_fills_and_samples_after_pickling(data):
    step, bert = _build(data)
    module, example = step.export({"bert": bert})
    loaded = pickle.loads(pickle.dumps(module))
    assert loaded(example).shape == (*example.shape, data.info.vocab_size)
    assert loaded.sample(2).shape == (2, data.info.shape[0])
    assert (loaded.fill(example) != data.info.mask_id).all()

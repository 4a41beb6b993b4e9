"""GPT: causality, the loss and perplexity it is trained and judged by, the tied head, sampling."""

import pickle

import pytest
import torch
import torch.nn.functional as F

from gentrain.data import load_dataset
from gentrain.families import all_families


@pytest.fixture(scope="module")
def data():
    return load_dataset(all_families()["gpt"].default_source)


def _build(data, flavor="debug", **overrides):
    family = all_families()["gpt"]
    torch.manual_seed(0)
    step = family.make_step()
    models = step.build(family.config(flavor=flavor, overrides=overrides), data.info)
    return step, models["gpt"].eval()


def test_changing_future_tokens_leaves_past_logits_unchanged(data):
    _, gpt = _build(data)
    ids = data.heldout[:2, :-1].clone()
    changed = ids.clone()
    changed[:, 20:] = torch.randint(0, data.info.vocab_size, changed[:, 20:].shape)
    with torch.no_grad():
        before, after = gpt(ids), gpt(changed)
    torch.testing.assert_close(after[:, :20], before[:, :20])
    assert not torch.allclose(after[:, 20:], before[:, 20:])


def test_loss_is_the_cross_entropy_of_each_next_token(data):
    step, gpt = _build(data)
    batch = data.train[:4]
    loss, terms = step.loss({"gpt": gpt}, batch, phase="gpt")
    logits = gpt(batch[:, :-1])
    expected = F.cross_entropy(logits.reshape(-1, data.info.vocab_size), batch[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, expected)
    assert terms == {}
    with torch.no_grad():
        perplexity = step.evaluate({"gpt": gpt}, batch)["perplexity"]
    assert perplexity == pytest.approx(expected.exp().item(), rel=1e-5)


def test_a_uniform_model_has_the_vocabulary_size_as_perplexity(data):
    step, gpt = _build(data)
    with torch.no_grad():
        gpt.head.weight.zero_()  # tied: every logit is 0
        perplexity = step.evaluate({"gpt": gpt}, data.heldout[:100])["perplexity"]
    assert perplexity == pytest.approx(data.info.vocab_size, rel=1e-5)


def test_the_lm_head_is_the_token_embedding(data):
    _, gpt = _build(data)
    assert gpt.head.weight is gpt.embed.tokens.weight
    counted = sum(p.numel() for p in gpt.parameters())  # the shared matrix once
    unique = {id(p): p.numel() for module in gpt.modules() for p in module.parameters()}
    assert counted == sum(unique.values())


def test_base_flavor_has_about_100m_parameters(data):
    with torch.device("meta"):  # shapes only: nothing allocated
        _, gpt = _build(data, flavor="base")
    assert len(gpt.blocks) == 12
    assert 80e6 < sum(p.numel() for p in gpt.parameters()) < 130e6


def test_generation_is_seeded_keeps_the_prompt_and_stays_in_the_vocabulary(data):
    _, gpt = _build(data)
    prompt = data.heldout[:3, :10]
    torch.manual_seed(7)
    first = gpt.generate(prompt, 80)  # runs past the context: the window slides
    torch.manual_seed(7)
    assert torch.equal(first, gpt.generate(prompt, 80))
    assert first.shape == (3, 90) and torch.equal(first[:, :10], prompt)
    assert 0 <= first.min() and first.max() < data.info.vocab_size


def test_top_k_of_one_is_greedy(data):
    _, gpt = _build(data, top_k=1)
    prompt = data.heldout[:2, :10]
    generated = gpt.generate(prompt, 1)
    with torch.no_grad():
        assert torch.equal(generated[:, -1], gpt(prompt)[:, -1].argmax(-1))


def test_cached_generation_follows_the_whole_forward_pass_past_the_context(data):
    """Generation keeps each block's keys and values while the sequence fits the context, then
    slides its window: greedy tokens equal those of a full forward pass at every step."""
    _, gpt = _build(data, top_k=1)
    gpt.eval()
    prompt = data.heldout[:2, :10]
    expected = prompt
    with torch.no_grad():
        for _ in range(gpt.context + 5 - 10):
            logits = gpt(expected[:, -gpt.context :])[:, -1]
            expected = torch.cat([expected, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(gpt.generate(prompt, gpt.context + 5 - 10), expected)


def test_decoding_settings_narrow_the_draws(data):
    _, gpt = _build(data)
    gpt.eval()
    prompt = data.heldout[:1, :10].repeat(64, 1)
    torch.manual_seed(0)
    wide = gpt.generate(prompt, 1, temperature=1.0)[:, -1]
    torch.manual_seed(0)
    narrow = gpt.generate(prompt, 1, temperature=1.0, top_p=0.2)[:, -1]
    cold = gpt.generate(prompt, 1, temperature=1e-4)[:, -1]
    with torch.no_grad():
        likeliest = gpt(prompt[:1])[0, -1].argmax()
    assert len(set(narrow.tolist())) < len(set(wide.tolist()))
    assert set(cold.tolist()) == {likeliest.item()}


def test_samples_start_from_the_newline_token(data):
    step, gpt = _build(data)
    samples = step.sample({"gpt": gpt}, 2)
    assert samples.shape == (2, data.info.shape[0])
    assert (samples[:, 0] == gpt.start_id).all() and data.info.decode([gpt.start_id]) == "\n"


def test_preview_continues_held_out_prompts_and_adds_samples(data):
    step, gpt = _build(data)
    texts = step.preview({"gpt": gpt}, data.heldout)
    assert len(texts) == 8
    assert texts[0].startswith("[prompt]\n" + data.info.decode(data.heldout[0, :32].tolist()))
    assert all(text.startswith("[sample]") for text in texts[4:])


def test_exported_module_samples_and_generates_after_pickling(data):
    step, gpt = _build(data)
    module, example = step.export({"gpt": gpt})
    loaded = pickle.loads(pickle.dumps(module))
    assert loaded(example).shape == (*example.shape, data.info.vocab_size)
    assert loaded.sample(2).shape == (2, data.info.shape[0])
    assert loaded.generate(example[:1, :3], 5).shape == (1, 8)

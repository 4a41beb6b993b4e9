"""Every built-in family passes the conformance checks that `gentrain check` runs (one
implementation: gentrain.conformance), on its debug flavor, on the CPU."""

import pytest

from gentrain import conformance
from gentrain.data import load_dataset
from gentrain.families import all_families

FAMILIES = sorted(all_families())
# what a family is known not to do: diffusers' UNet cannot be cut into pipeline stages
UNSUPPORTED = {("hf_unet2d", "pipeline composes")}


@pytest.mark.parametrize("check", sorted(conformance.CHECKS))
@pytest.mark.parametrize("name", FAMILIES)
def test_family_passes_check(name, check):
    family = all_families()[name]
    subject = conformance.build(family, family.smallest_flavor)
    try:
        conformance.CHECKS[check](subject)  # raises CheckFailed saying why
    except conformance.CheckSkipped:
        offers_nothing = check == "answers" and not family.text_metrics  # image families
        assert (name, check) in UNSUPPORTED or offers_nothing
    else:
        assert (name, check) not in UNSUPPORTED


@pytest.mark.parametrize("name", FAMILIES)
def test_every_flavor_builds_and_flavors_grow(name):
    family = all_families()[name]
    step = family.make_step()
    data = load_dataset(family.default_source)
    sizes = []
    for flavor in family.flavors:
        models = step.build(family.config(flavor=flavor, overrides={}), data.info)
        sizes.append(sum(p.numel() for m in models.values() for p in m.parameters()))
    assert sizes == sorted(sizes), "flavors grow from debug to base"


@pytest.mark.parametrize("name", ["gpt", "hf_unet2d"])  # (every check: the test above)
def test_gentrain_checks_outcomes_say_which_strategies_a_family_supports(name):
    family = all_families()[name]
    outcomes = conformance.run_checks(family, flavor=family.smallest_flavor)
    skipped = {(name, "answers")} if not family.text_metrics else set()
    assert all(o.result == "pass" or (name, o.check) in UNSUPPORTED | skipped for o in outcomes), (
        outcomes
    )
    support = dict((s, ok) for s, ok, _ in conformance.strategy_support(family, outcomes))
    expected = {"ddp": True, "fsdp": True, "deepspeed": True, "pipeline": name != "hf_unet2d"}
    assert support == expected

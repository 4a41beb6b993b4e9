"""The text families under every strategy (tests/matrix.py)."""

import pytest

from matrix import STRATEGY_SETTINGS, local_ray, one_worker, train_cell  # noqa: F401 (fixtures)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGY_SETTINGS)
@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_family_trains_under_strategy(family, strategy, one_worker, new_store, tmp_path):  # noqa: F811
    new_store(tmp_path)
    train_cell(family, strategy, one_worker, tmp_path)

"""Every family ships a job. (Each family's run end to end, metrics, samples and a model that
samples in a fresh process, is the ddp cell of test_matrix.py.)"""

from collections import defaultdict

import pytest

from conftest import JOBS
from gentrain import spec as spec_module
from gentrain.families import all_families

pytestmark = pytest.mark.slow


def _job_per_family() -> dict[str, str]:
    jobs = defaultdict(list)
    for path in sorted(JOBS.glob("*.yaml")):
        jobs[spec_module.load(path).model.family].append(path)
    return {family: str(paths[0]) for family, paths in jobs.items()}


JOB_PER_FAMILY = _job_per_family()


def test_every_family_ships_a_job():
    assert set(JOB_PER_FAMILY) == set(all_families())

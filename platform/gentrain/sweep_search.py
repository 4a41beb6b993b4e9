"""What a sweep searches and how: its space as Ray Tune domains, the search algorithm (grid and
random through Tune's variant generator, bayesian through Optuna), the scheduler that stops
trials early, and the stopper that ends a sweep when its step budget is spent."""

from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from ray.tune.search import BasicVariantGenerator, Searcher

from gentrain import warm_start
from gentrain.errors import SpecError
from gentrain.spec_sweep import SweepSection

# Schedulers count a trial's progress in evaluations (train.eval_every), reported by every trial.
TIME_ATTR = "evaluations"


def domain(dist: dict[str, Any]):
    """A space entry as a Ray Tune domain ({int: [a, b]} includes b)."""
    ((kind, values),) = dist.items()
    if kind == "uniform":
        return tune.uniform(*values)
    if kind == "loguniform":
        return tune.loguniform(*values)
    if kind == "int":
        return tune.randint(values[0], values[1] + 1)
    if kind == "choice":
        return tune.choice(values)
    return tune.grid_search(values)


def param_space(sweep: SweepSection) -> dict[str, Any]:
    return {key: domain(dist) for key, dist in sweep.space.items()}


def search_for(sweep: SweepSection, max_steps: int, earlier: list[warm_start.EarlierTrial]):
    """(the search algorithm, Tune's param space, its num_samples) for the sweep; a grid or
    random sweep warm-started from `earlier` runs its own configurations that `earlier` lacks."""
    if sweep.search == "bayesian":
        return (
            make_search(sweep, max_steps=max_steps, earlier=earlier),
            param_space(sweep),
            sweep.trials,
        )
    if not earlier:
        return make_search(sweep), param_space(sweep), _samples(sweep)
    todo = [c for c in configurations(sweep) if not warm_start.was_run(c, earlier)]
    if not todo:
        raise SpecError(
            f"sweep.warm_start: {sweep.warm_start} ran every configuration of this sweep; "
            "raise sweep.trials or widen sweep.space"
        )
    # the configurations to run, given whole; the space's grids become choices so that they
    # do not multiply them
    space = {
        key: tune.choice(next(iter(d.values()))) if "grid" in d else domain(d)
        for key, d in sweep.space.items()
    }
    search = BasicVariantGenerator(points_to_evaluate=todo, max_concurrent=sweep.concurrency)
    return search, space, len(todo)


def _samples(sweep: SweepSection) -> int:
    """Tune's num_samples for a grid or random sweep: a grid is drawn whole, once."""
    return 1 if sweep.search == "grid" else sweep.trials


def configurations(sweep: SweepSection) -> list[dict[str, Any]]:
    """The configurations a grid or random sweep runs, in order: what Tune's variant generator
    draws under the sweep's seed."""
    from ray.tune.search.sample import _BackwardsCompatibleNumpyRng
    from ray.tune.search.variant_generator import generate_variants

    rng = _BackwardsCompatibleNumpyRng(sweep.seed)
    return [
        {key: variant["config"][key] for key in sweep.space}
        for _ in range(_samples(sweep))
        for _, variant in generate_variants({"config": param_space(sweep)}, random_state=rng)
    ]


def make_search(
    sweep: SweepSection,
    *,
    max_steps: int | None = None,
    earlier: list[warm_start.EarlierTrial] = (),
) -> Searcher | BasicVariantGenerator:
    """Grid and random search: Tune's variant generator (seeded); bayesian: Optuna's TPE or
    Gaussian-process sampler (seeded), told which trials a scheduler stopped (pruned) and
    the earlier sweep's trials (sweep.warm_start)."""
    if sweep.search != "bayesian":
        return BasicVariantGenerator(random_state=sweep.seed, max_concurrent=sweep.concurrency)
    from gentrain import bayesian

    return bayesian.search(sweep, max_steps=max_steps, earlier=list(earlier))


class StepBudget(tune.Stopper):
    """sweep.budget_steps: stops the sweep once its trials' training steps add up to it."""

    def __init__(self, budget: int):
        self.budget, self.steps = budget, {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.steps[trial_id] = max(self.steps.get(trial_id, 0), result.get("step", 0))
        return False

    def stop_all(self) -> bool:
        return sum(self.steps.values()) >= self.budget


def make_scheduler(sweep: SweepSection):
    if sweep.scheduler == "asha":
        return ASHAScheduler(
            time_attr=TIME_ATTR,
            max_t=10**6,  # never the reason to stop: a trial ends at its own max_steps
            grace_period=sweep.asha.grace_period,
            reduction_factor=sweep.asha.reduction_factor,
        )
    if sweep.scheduler == "pbt":
        mutations = sweep.pbt.mutations or sweep.space
        return PopulationBasedTraining(
            time_attr=TIME_ATTR,
            perturbation_interval=sweep.pbt.perturbation_interval,
            quantile_fraction=sweep.pbt.quantile_fraction,
            hyperparam_mutations={key: _mutation(dist) for key, dist in mutations.items()},
            require_attrs=False,
        )
    return FIFOScheduler()


def _mutation(dist: dict[str, Any]):
    ((kind, values),) = dist.items()
    return list(values) if kind in ("choice", "grid") else domain(dist)

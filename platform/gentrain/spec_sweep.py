"""The sweep section of a job spec: the space of hyperparameters, the search and the scheduler
(`gentrain sweep`). Imports no ray, mlflow or torch."""

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from gentrain.spec_sections import Section

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice", "grid")


def check_distribution(dist: Any) -> None:
    """One sweep dimension: {uniform|loguniform|int: [a, b]} with a < b, or {choice|grid: [...]}."""
    if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        raise ValueError(f"must be one of {', '.join(f'{{{d}: ...}}' for d in DISTRIBUTIONS)}")
    ((kind, values),) = dist.items()
    if kind in ("choice", "grid"):
        if not isinstance(values, list) or not values:
            raise ValueError(f"{kind} takes a non-empty list of values")
        return
    number = int if kind == "int" else (int, float)
    if (
        not isinstance(values, list)
        or len(values) != 2
        or not all(isinstance(v, number) and not isinstance(v, bool) for v in values)
    ):
        raise ValueError(f"{kind} takes [low, high] ({'integers' if kind == 'int' else 'numbers'})")
    low, high = values
    if not low < high:
        raise ValueError(f"{kind} needs low < high (got [{low}, {high}])")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"loguniform needs 0 < low (got {low})")


def _check_space(space: dict[str, Any]) -> dict[str, Any]:
    for key, dist in space.items():
        try:
            check_distribution(dist)
        except ValueError as err:
            raise ValueError(f"{key}: {err}") from None
    return space


class AshaSection(Section):
    """Successive halving on the sweep metric, counted in evaluations (train.eval_every)."""

    grace_period: int = Field(1, ge=1, description="evaluations before a trial may be stopped")
    reduction_factor: float = Field(2.0, gt=1)


class PbtSection(Section):
    """Population based training: every `perturbation_interval` evaluations, the worst trials
    load a better trial's checkpoint and go on with mutated hyperparameters."""

    perturbation_interval: int = Field(1, ge=1, description="evaluations between exploits")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)
    mutations: dict[str, dict[str, Any]] | None = None  # default: the space's dimensions

    @field_validator("mutations")
    @classmethod
    def _valid_mutations(cls, mutations: dict | None) -> dict | None:
        return _check_space(mutations) if mutations else mutations


class TpeSection(Section):
    """Optuna's TPE sampler (search: bayesian, sampler: tpe)."""

    multivariate: bool = False  # one model of the dimensions together, not one each
    # trials still running count as a bad result, so concurrent trials spread out;
    # default: on when sweep.concurrency is more than 1
    constant_liar: bool | None = None


class SweepSection(Section):
    """`gentrain sweep`: Ray Tune over `space` (dotted spec keys to distributions)."""

    search: Literal["grid", "random", "bayesian"] = "random"
    sampler: Literal["tpe", "gp"] = "tpe"  # bayesian: Optuna's TPE or Gaussian process
    tpe: TpeSection = TpeSection()
    metric: str = "loss"
    mode: Literal["min", "max"] = "min"
    trials: int = Field(8, ge=1, description="ignored by grid: the grid's size is the count")
    # trials side by side; auto: as many as the cluster has room for
    concurrency: int | Literal["auto"] = 1
    seed: int = Field(0, ge=0)
    time_budget: float | None = Field(None, gt=0, description="seconds")
    # training steps of all trials together: no trial is started, and those running are
    # stopped, once they are spent
    budget_steps: int | None = Field(None, ge=1)
    # an earlier sweep's parent run id, or an experiment: bayesian search learns from its
    # finished trials; grid and random search skip the configurations it ran
    warm_start: str | None = None
    scheduler: Literal["none", "asha", "pbt"] = "none"
    asha: AshaSection = AshaSection()
    pbt: PbtSection = PbtSection()
    space: dict[str, dict[str, Any]]

    @field_validator("concurrency", mode="before")
    @classmethod
    def _valid_concurrency(cls, value: Any) -> Any:
        if value == "auto" or (type(value) is int and value >= 1):
            return value
        raise ValueError("a number of trials at once (1 or more), or auto")

    @field_validator("space")
    @classmethod
    def _valid_space(cls, space: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not space:
            raise ValueError(
                "name at least one dotted spec key, e.g. optim.lr: {loguniform: [1e-5, 1e-2]}"
            )
        return _check_space(space)

    @model_validator(mode="after")
    def _search_rules(self) -> "SweepSection":
        for key, dist in self.space.items():
            kind = next(iter(dist))
            if self.search == "grid" and kind != "grid":
                raise ValueError(
                    f"space.{key}: search grid takes {{grid: [...]}} only (got {kind})"
                )
            if self.search == "bayesian" and kind == "grid":
                raise ValueError(f"space.{key}: search bayesian cannot take a grid; use choice")
        if self.scheduler != "asha" and self.asha != AshaSection():
            raise ValueError(f"asha is set but scheduler is {self.scheduler}")
        if self.scheduler != "pbt" and self.pbt != PbtSection():
            raise ValueError(f"pbt is set but scheduler is {self.scheduler}")
        if (self.search, self.sampler) != ("bayesian", "tpe") and self.tpe != TpeSection():
            raise ValueError("tpe is set but search is not bayesian with sampler tpe")
        return self

"""Bayesian search: Optuna's TPE or Gaussian-process sampler behind Ray Tune's Optuna searcher,
told what Optuna expects of trials it did not see end (pruned) or did not run (a warm start)."""

import warnings

import optuna
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from gentrain.spec_sweep import SweepSection
from gentrain.warm_start import EarlierTrial, was_run


def search(sweep: SweepSection, *, max_steps: int | None, earlier: list[EarlierTrial]):
    """The sweep's seeded sampler; trials stopped before `max_steps` are told as pruned."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Optuna samples its first 10 trials at random: most of a small sweep. A third of the
    # trials (2 to 10) is enough for its model to start from; trials told by a warm start count.
    # Under a step budget, `trials` is only a cap: count the whole trials the budget pays for.
    trials = sweep.trials
    if sweep.budget_steps and max_steps:
        trials = min(trials, max(1, sweep.budget_steps // max_steps))
    startup = max(0, min(10, max(2, trials // 3)) - len(earlier))
    if sweep.sampler == "gp":
        sampler = optuna.samplers.GPSampler(seed=sweep.seed, n_startup_trials=startup)
    else:
        liar = sweep.tpe.constant_liar
        sampler = optuna.samplers.TPESampler(
            seed=sweep.seed,
            n_startup_trials=startup,
            multivariate=sweep.tpe.multivariate,
            constant_liar=sweep.concurrency > 1 if liar is None else liar,
        )
    return PruningOptunaSearch(
        sampler=sampler, max_steps=max_steps, earlier=list(earlier), seed=sweep.seed
    )


class PruningOptunaSearch(OptunaSearch):
    """Ray Tune's Optuna searcher, telling Optuna what it expects: each evaluation as an
    intermediate value at its step, a trial stopped before train.max_steps (by a scheduler or
    the step budget) as pruned rather than complete, and an earlier sweep's trials."""

    REDRAWS = 20

    def __init__(self, *, max_steps: int | None, earlier: list, seed: int, **kwargs):
        super().__init__(**kwargs)
        self._max_steps, self._earlier = max_steps, earlier
        self._at_random = optuna.samplers.RandomSampler(seed=seed)

    def _setup_study(self, mode):
        super()._setup_study(mode)
        state = optuna.trial.TrialState
        for trial in self._earlier:
            self._ot_study.add_trial(
                optuna.trial.create_trial(
                    state=state.COMPLETE if trial.finished else state.PRUNED,
                    value=trial.value if trial.finished else None,
                    params=trial.values,
                    distributions=self._space,
                    intermediate_values=trial.history,
                )
            )

    def suggest(self, trial_id: str) -> dict | None:
        """Optuna's next configuration, unless the earlier sweep ran it: that draw is dropped
        and another taken; where the model keeps drawing it, at random."""
        config = super().suggest(trial_id)
        for redraw in range(self.REDRAWS):
            if config is None or not was_run(config, self._earlier):
                break
            drawn = self._ot_trials.pop(trial_id)
            self._ot_study.tell(drawn, state=optuna.trial.TrialState.FAIL)  # not a result
            model = self._ot_study.sampler
            if redraw >= self.REDRAWS // 2:
                self._ot_study.sampler = self._at_random
            try:
                config = super().suggest(trial_id)
            finally:
                self._ot_study.sampler = model
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        value, ot_trial = result.get(self.metric), self._ot_trials.get(trial_id)
        if value is None or ot_trial is None or trial_id in self._completed_trials:
            return
        with warnings.catch_warnings():  # a restored trial reports some steps again
            warnings.simplefilter("ignore")
            ot_trial.report(value, result.get("step", result.get(TRAINING_ITERATION, 0)))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        stopped_early = (
            not error
            and self._max_steps is not None
            and result is not None
            and result.get("step", self._max_steps) < self._max_steps
        )
        if not stopped_early or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)

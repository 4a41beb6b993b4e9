"""`model.init_from`: start a job from weights trained before (fine-tuning).

Sources: `runs:/<run_id>/model` or `models:/<name>/<version>` (an MLflow model that gentrain logged:
its weights go into the family's exported network, e.g. the GAN's generator), or a gentrain
checkpoint (a `checkpoint_*` directory of any strategy but pipeline, or an older one's
`strategy.pt`: every network's weights).
"""

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from gentrain.errors import GentrainError
from gentrain.families import FamilyStep


def load_initial_weights(
    source: str, *, step_fn: FamilyStep, models: Mapping[str, nn.Module], tracking_uri: str
) -> None:
    if source.startswith(("runs:/", "models:/")):
        from gentrain.tracking import load_model_state

        module, _ = step_fn.export(models)
        _load_exactly(module, load_model_state(source, uri=tracking_uri), source=source)
        return
    weights = _checkpoint_weights(Path(source), models)
    for name, model in models.items():
        if name not in weights:
            raise GentrainError(
                f"model.init_from: {source} has no '{name}' network (it has "
                f"{', '.join(weights)}): it was trained as another model family"
            )
        _load_exactly(model, weights[name], source=source)


def _checkpoint_weights(path: Path, models: Mapping[str, nn.Module]) -> dict[str, dict]:
    """Every network's weights in a gentrain checkpoint."""
    if path.is_dir() and not (path / "strategy.pt").is_file():
        from gentrain.strategies import whole_state

        return whole_state.read(path, whole_state.parameter_names(dict(models))).weights
    single_file = path / "strategy.pt" if path.is_dir() else path  # written before DCP
    state = torch.load(single_file, map_location="cpu", weights_only=True)
    return {name: parts["model"] for name, parts in state.items()}


def _load_exactly(module: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """load_state_dict, with an architecture mismatch told in one line."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    resized = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or resized:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if resized:
            key = resized[0]
            details.append(f"{key}: {tuple(state[key].shape)} there, {tuple(own[key].shape)} here")
        raise GentrainError(
            f"model.init_from: {source} does not fit this model ({'; '.join(details)}); use the "
            "same model.family, model.flavor and model.overrides as the source run"
        )
    module.load_state_dict(state)

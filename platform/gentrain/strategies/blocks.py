"""A network's blocks: the modules fsdp shards one by one, activation checkpointing recomputes
and torch.compile compiles, each on its own. They are the blocks a pipeline cuts between."""

from torch import nn

from gentrain.families import FamilyStep, PipelineUnsupported
from gentrain.spec_sections import TrainSection


def checkpoint_and_compile(model: nn.Module, units: list[nn.Module], train: TrainSection) -> None:
    """train.activation_checkpointing: each unit's activations are recomputed in the backward
    pass instead of kept (torch's composable checkpoint: parameter names stay as they are). An
    in-place activation would change a tensor the recomputation checks: the network's in-place
    activations run out of place (the same values). train.compile: each unit's forward is
    compiled (in place)."""
    if train.activation_checkpointing:
        from torch.distributed._composable import checkpoint

        for module in model.modules():
            if getattr(module, "inplace", False) is True:
                module.inplace = False
        for unit in units:
            checkpoint(unit)
    if train.compile:
        for unit in units:
            unit.compile()


def of_family(models: dict[str, nn.Module], step_fn: FamilyStep) -> list[nn.Module]:
    """Every phase's pipeline blocks, or none where the family cannot be cut into a pipeline."""
    if not callable(getattr(step_fn, "pipeline", None)):
        return []
    try:
        return [b for phase in step_fn.phases for b in step_fn.pipeline(models, phase=phase).blocks]
    except PipelineUnsupported:
        return []


def units(model: nn.Module, blocks: list[nn.Module]) -> list[nn.Module]:
    """The modules of `model` to treat one by one, innermost first: those the pipeline's blocks
    hold (a block that wraps the network's modules is looked into), or without blocks each
    entry of the network's module lists (a transformer's layers, a UNet's down and up blocks).
    A module holding a weight that another unit holds too (tied embeddings) is left out (to the
    network's own sharding, under fsdp: a weight belongs to one unit)."""
    own = {id(m) for m in model.modules() if m is not model}
    found: dict[int, nn.Module] = {}

    def visit(module: nn.Module, *, listed: bool) -> None:
        containers = (nn.ModuleList, nn.ModuleDict)
        if id(module) in own and not isinstance(module, containers) and (blocks or listed):
            found.setdefault(id(module), module)
            return
        for child in module.children():
            visit(child, listed=isinstance(module, containers))

    for root in blocks or [model]:
        visit(root, listed=False)
    units = list(found.values())
    params = {id(u): {id(p) for p in u.parameters()} for u in units}
    tied = set()
    for a in units:
        for b in units:
            nested = _contains(a, b) or _contains(b, a)
            if a is not b and not nested and params[id(a)] & params[id(b)]:
                tied |= {id(a), id(b)}
    depth = {id(m): name.count(".") for name, m in model.named_modules()}
    return sorted((u for u in units if id(u) not in tied), key=lambda u: -depth[id(u)])


def _contains(outer: nn.Module, inner: nn.Module) -> bool:
    return any(m is inner for m in outer.modules())

"""Families from outside gentrain: the user's own (`model.family: package.module:NAME`, found in
the spec's directory, the working directory or an installed package) and those installed
packages offer through the entry-point group `gentrain.families`.

A name is imported, checked to be a FamilySpec whose step has what the trainer needs, and only
then used: nothing in the user's module is called while it is checked. Every problem is a
one-line SpecError naming `model.family`.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import re
import sys
import sysconfig
import traceback
import types
from dataclasses import dataclass
from pathlib import Path

from gentrain.errors import SpecError
from gentrain.families import REQUIRED_METHODS, FamilySpec

ENTRY_POINT_GROUP = "gentrain.families"
REFERENCE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")

_loaded: dict[str, FamilySpec] = {}  # reference or entry-point name -> its checked family


def search_in(*directories: Path) -> None:
    """Let `package.module:NAME` be found in these directories too (after installed packages, so
    a file of the user's never shadows one of them)."""
    for directory in directories:
        entry = str(Path(directory).resolve())
        if entry not in sys.path:
            sys.path.append(entry)


def load_reference(reference: str, *, field: str = "model.family") -> FamilySpec:
    if reference in _loaded:
        return _loaded[reference]
    if not REFERENCE.match(reference):
        raise SpecError(
            f"{field}: '{reference}' is not a family name; use a built-in family's name, an "
            "installed one's (gentrain ls), or package.module:NAME"
        )
    module_name, attribute = reference.split(":")
    module = _import(module_name, field=field)
    if not hasattr(module, attribute):
        raise SpecError(f"{field}: module {module_name} ({module.__file__}) has no {attribute}")
    family = _checked(getattr(module, attribute), f"{field}: {reference}")
    _loaded[reference] = family
    return family


@dataclass(frozen=True)
class Installed:
    value: str  # module:NAME
    dist: str  # the distribution (package) that offers it


def installed_families() -> dict[str, Installed]:
    """Entry-point name -> where, for every installed package that offers families."""
    points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return {p.name: Installed(p.value, p.dist.name if p.dist else "?") for p in points}


def load_installed(name: str, installed: Installed) -> FamilySpec:
    if name not in _loaded:
        value = installed.value
        field = f"model.family: {name} (entry point {ENTRY_POINT_GROUP} of {installed.dist})"
        module_name, _, attribute = value.partition(":")
        module = _import(module_name, field=field)
        if not attribute or not hasattr(module, attribute):
            raise SpecError(f"{field}: module {module_name} has no {attribute or 'NAME'}")
        _loaded[name] = _checked(getattr(module, attribute), field)
    return _loaded[name]


def code_to_ship(family_name: str) -> Path | None:
    """The file or package directory Ray's workers need to import a `package.module:NAME`
    family (shipped as a py_module), or None when they import it as gentrain or an installed
    package already."""
    if ":" not in family_name:
        return None
    top = sys.modules.get(family_name.split(":")[0].split(".")[0])
    if top is None or top.__name__ == "gentrain":
        return None
    paths = getattr(top, "__path__", None)
    where = Path(list(paths)[0]) if paths else Path(top.__file__)
    installed = {Path(sysconfig.get_path(kind)).resolve() for kind in ("purelib", "platlib")}
    if any(where.resolve().is_relative_to(place) for place in installed):
        return None
    return where


def _import(module_name: str, *, field: str) -> types.ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise SpecError(
                f"{field}: no module {module_name} in the spec's directory, the working "
                "directory or an installed package"
            ) from None
        raise SpecError(f"{field}: importing {module_name} failed: {_where(err)}") from None
    except Exception as err:  # whatever the user's module raises while it is imported
        raise SpecError(f"{field}: importing {module_name} failed: {_where(err)}") from None


def _where(err: BaseException) -> str:
    """`Type: message (file.py, line N)` of an error raised in the user's code."""
    text = " ".join(str(err).split())[:200]
    if isinstance(err, SyntaxError) and err.filename:
        return f"SyntaxError: {err.msg} ({Path(err.filename).name}, line {err.lineno})"
    frames = traceback.extract_tb(err.__traceback__)
    own = [f for f in frames if "importlib" not in f.filename]
    place = f" ({Path(own[-1].filename).name}, line {own[-1].lineno})" if own else ""
    return f"{type(err).__name__}: {text}{place}"


def _checked(family: object, field: str) -> FamilySpec:
    """`family` if it is a FamilySpec whose config, flavors and step the trainer can use."""
    if not isinstance(family, FamilySpec):
        kind = (
            "module"
            if isinstance(family, types.ModuleType)
            else "class"
            if isinstance(family, type)
            else "function"
            if callable(family)
            else type(family).__name__
        )
        raise SpecError(
            f"{field} is a {kind}, not a FamilySpec (from gentrain.families import FamilySpec)"
        )
    if family.modality not in ("image", "text"):
        raise SpecError(f"{field}: modality is {family.modality!r}; allowed: image, text")
    if not dataclasses.is_dataclass(family.config_cls):
        raise SpecError(f"{field}: config_cls must be a dataclass of the model's settings")
    if not family.flavors:
        raise SpecError(f"{field}: flavors is empty; give at least one, e.g. {{'small': {{}}}}")
    fields = {f.name for f in dataclasses.fields(family.config_cls)}
    for flavor, values in family.flavors.items():
        unknown = sorted(set(values) - fields)
        if unknown:
            raise SpecError(
                f"{field}: flavor '{flavor}' sets {unknown[0]}, which "
                f"{family.config_cls.__name__} does not have; it has {', '.join(sorted(fields))}"
            )
    try:
        step = family.step_class()
    except Exception as err:
        raise SpecError(f"{field}: its step {family.step} cannot be imported ({err})") from None
    if not isinstance(step, type):
        raise SpecError(f"{field}: step must be a class (or 'module:Class'), not {step!r}")
    phases = getattr(step, "phases", None)
    if not (isinstance(phases, tuple) and phases and all(isinstance(p, str) for p in phases)):
        raise SpecError(
            f"{field}: {step.__name__}.phases must be a tuple of the networks' names, "
            "e.g. phases = ('model',)"
        )
    for method in REQUIRED_METHODS:
        if not callable(getattr(step, method, None)):
            raise SpecError(
                f"{field}: {step.__name__} has no {method}(); a step needs "
                f"{', '.join(m + '()' for m in REQUIRED_METHODS)}"
            )
    return family

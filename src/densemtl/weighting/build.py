"""Build a weighting method from its registry name and arguments, accepting LibMTL's names.

``spec/weighting.md`` §1.10: LibMTL method names (``Nash_MTL``, ``UW``) and hyperparameter names
(``T`` for DWA's temperature, ``<Method>_<name>``) are accepted as aliases. Wrong names raise a
``ValueError`` that lists the valid methods or arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from densemtl.weighting.base import WEIGHTINGS, Weighting

__all__ = ["build_weighting", "resolve_arguments"]


def resolve_arguments(cls: type, name: str, args: Mapping[str, Any] | None) -> dict[str, Any]:
    """Map LibMTL-style argument names to ``cls``'s and check them; raise listing the valid ones."""
    params = [p for p in inspect.signature(cls).parameters.values() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    valid = [p.name for p in params]
    prefixes = {n.lower() + "_" for n in (getattr(cls, "libmtl_name", ""), name) if n}
    aliases = dict(getattr(cls, "arg_aliases", {}))
    resolved: dict[str, Any] = {}
    unknown = []
    for key, value in (args or {}).items():
        target = key
        if target not in valid:
            for prefix in prefixes:
                if target.lower().startswith(prefix) and len(target) > len(prefix):
                    target = target[len(prefix) :]
                    break
            target = aliases.get(target, target)
        if target not in valid:
            unknown.append(key)
            continue
        if target in resolved:
            raise ValueError(f"weighting {name!r}: argument {target!r} given twice (as {key!r})")
        resolved[target] = value
    if unknown:
        alias_note = f"; LibMTL aliases: {aliases}" if aliases else ""
        raise ValueError(
            f"weighting {name!r} has no argument(s) {sorted(unknown)}; valid arguments: {valid}{alias_note}"
        )
    return resolved


def build_weighting(name: str, args: Mapping[str, Any] | None = None, tasks: Sequence[str] | None = None) -> Weighting:
    """Instantiate the registered method ``name`` with ``args`` and bind it to ``tasks`` (if given)."""
    key = WEIGHTINGS.canonical(name)
    cls = WEIGHTINGS.get(key)
    weighting = cls(**resolve_arguments(cls, key, args))
    if tasks:
        weighting.bind(tasks)
    return weighting

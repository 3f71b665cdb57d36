"""Swapping modules of a loaded model for accelerated subclasses, and back.

As ``nn.quantize(model, class_predicate=...)`` does: the model is built and loaded as the pure
reference, then chosen module instances are replaced by instances of a subclass that share the same
parameter arrays (nothing is copied; ``model.parameters()`` keeps its names, shapes and arrays) and
carry what was prepared for them (packed weights, folded weights) as plain attributes. Each
replacement remembers the module it replaced, so :func:`restore` gives the model back as loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import mlx.nn as nn

M = TypeVar("M", bound=nn.Module)

_REPLACED = "_replaced_module"


def adopt(cls: type[M], module: nn.Module) -> M:
    """An instance of ``cls``, a subclass of ``type(module)``, with ``module``'s parameters, child
    modules and attributes (the same objects), remembering ``module`` for :func:`restore`."""
    if not issubclass(cls, type(module)):
        raise TypeError(f"{cls.__name__} is not a subclass of {type(module).__name__}")
    new = cls.__new__(cls)
    dict.update(new, module)  # parameters and children: MLX modules are dicts
    new.__dict__.update(module.__dict__)  # plain attributes (stride, padding, ...)
    new.__dict__[_REPLACED] = module
    return new


def attach(module: nn.Module, name: str, value: Any) -> None:
    """Keep ``value`` on ``module`` as a plain attribute: neither a parameter nor a child module
    (``Module.__setattr__`` would register an array or a list as one)."""
    module.__dict__[name] = value


def swap(model: nn.Module, replace: Callable[[nn.Module], nn.Module | None]) -> int:
    """Replace, top down, each module for which ``replace(module)`` gives a new one; returns how many.

    The walk goes on inside each replacement. A container shared with a replaced module (a list of
    blocks) is never changed in place: the replacement gets a new one, so the replaced module stays
    as it was.
    """
    count = 0

    def visit(value: Any) -> Any:
        nonlocal count
        if isinstance(value, nn.Module):
            new = replace(value)
            if new is not None:
                count += 1
                value = new
            for key, child in list(value.items()):
                updated = visit(child)
                if updated is not child:
                    value[key] = updated
            return value
        if isinstance(value, (list, tuple)):
            items = [visit(v) for v in value]
            return type(value)(items) if any(a is not b for a, b in zip(items, value)) else value
        if isinstance(value, dict):
            items = {k: visit(v) for k, v in value.items()}
            return items if any(items[k] is not value[k] for k in value) else value
        return value

    for key, child in list(model.items()):
        updated = visit(child)
        if updated is not child:
            model[key] = updated
    return count


def restore(model: nn.Module) -> int:
    """Put back every module that :func:`adopt` replaced anywhere in ``model``; returns how many."""

    def original(module: nn.Module) -> nn.Module | None:
        if _REPLACED not in module.__dict__:
            return None
        while _REPLACED in module.__dict__:
            module = module.__dict__[_REPLACED]
        return module

    return swap(model, original)


def replaced(model: nn.Module) -> list[str]:
    """Paths of the modules of ``model`` that are replacements (for tests and logs)."""
    return [name for name, module in model.named_modules() if _REPLACED in module.__dict__]

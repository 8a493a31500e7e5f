"""Declared settings: a knob is a dataclass field carrying its default, help and bounds; checked and documented here.

The ground floor of params: `pipeline.config` (the pipeline's sections) and each task package (its own section) declare
their knobs with `knob`; `pipeline.params` checks values with `check_bounds` and writes the reference with `bounds_text`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import field
from typing import Any

from pipeline.errors import PipelineError


def knob(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: tuple | None = None,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    factory=None,
) -> Any:
    """A declared setting: default, help and bounds in one place (bounds apply to each item of a list)."""
    meta = {"help": help, "choices": choices, "gt": gt, "ge": ge, "lt": lt}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def check_bounds(value: Any, meta: typing.Mapping, key: str) -> None:
    """A value (each item of a list) against a knob's declared choices and bounds."""
    if value is None:
        return
    if isinstance(value, list):
        for item in value:
            check_bounds(item, meta, key)
        return
    if meta.get("choices") and value not in meta["choices"]:
        raise PipelineError(f"params.yaml: '{key}' must be one of {meta['choices']}, got '{value}'")
    gt, ge, lt = meta.get("gt"), meta.get("ge"), meta.get("lt")
    if (gt is not None and not value > gt) or (ge is not None and not value >= ge) or (lt is not None and not value < lt):
        bounds = " and ".join(f"{op} {b}" for op, b in (("> ", gt), (">=", ge), ("< ", lt)) if b is not None).replace("  ", " ")
        raise PipelineError(f"params.yaml: '{key}' must be {bounds}, got {value}")


def bounds_text(meta: typing.Mapping) -> str:
    if meta.get("choices"):
        return " \\| ".join(f"`{c}`" for c in meta["choices"])
    parts = [f"{op} {meta[k]}" for k, op in (("gt", ">"), ("ge", "≥"), ("lt", "<")) if meta.get(k) is not None]
    return ", ".join(parts)

"""Spec errors: :class:`SpecError` and the formatting of pydantic errors into messages that name the
file, the dotted field path, the bad value and what is allowed."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from pydantic import BaseModel, ValidationError

from bike.config import ConfigError, format_validation_error, short_repr

# Location parts pydantic adds for the members of a union field (init_from: mapping or path).
_UNION_MEMBERS = frozenset({"InitFromSpec", "str"})


class SpecError(ConfigError):
    """An unusable spec; the message names file, dotted field path, value and what is allowed."""


def _format_pydantic(source: str | Path, exc: ValidationError, prefix: str, root: Optional[type[BaseModel]]) -> str:
    """format_validation_error, with unknown-field lines listing the allowed field names, required
    fields reported as missing, and the noise of union fields (``init_from``: mapping or path) removed."""
    text = format_validation_error(source, exc, prefix=prefix)
    if root is None:
        return text
    head, *lines = text.splitlines()
    out: list[str] = []
    for err, line in zip(exc.errors(), lines):
        loc_parts = [p for p in err["loc"] if p not in _UNION_MEMBERS]
        if len(loc_parts) != len(err["loc"]) and "str" in err["loc"] and isinstance(err.get("input"), dict):
            continue  # a mapping was given: the "path" member of the union is not what the user meant
        loc = ".".join(str(p) for p in loc_parts)
        loc = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        if err["type"] == "missing":
            line = f"  {loc}: missing; this field is required"
        elif err["type"] == "extra_forbidden":
            allowed = _allowed_fields_at(root, tuple(loc_parts[:-1]))
            if allowed:
                line = f"  {loc}: got {short_repr(err.get('input'))}; unknown field. Allowed: {', '.join(sorted(allowed))}"
        else:
            line = "  " + loc + ":" + line.split(":", 1)[1] if ":" in line else line
        out.append(line)
    head = head.split(" (")[0] + f" ({len(out)} error(s))"
    return "\n".join([head] + out)


def _allowed_fields_at(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """Field names of the pydantic model reached by walking ``loc`` from ``model``."""
    current: Any = model
    parts = list(loc)
    while True:
        origin = typing.get_origin(current)
        if origin is Union or str(origin) == "types.UnionType":
            models = [a for a in typing.get_args(current) if isinstance(a, type) and issubclass(a, BaseModel)]
            if not models:
                return []
            current = models[0]
            continue
        if origin in (dict, Mapping) and parts:
            parts.pop(0)
            current = typing.get_args(current)[1]
            continue
        if origin in (list, Sequence) and parts:
            parts.pop(0)
            current = typing.get_args(current)[0]
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            if not parts:
                return list(current.model_fields)
            name = parts.pop(0)
            if name not in current.model_fields:
                return []
            current = current.model_fields[name].annotation
            continue
        return []

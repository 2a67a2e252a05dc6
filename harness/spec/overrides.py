"""Dotted ``key=value`` overrides (``model.frames=16``) and ``${VAR}`` / ``${VAR:-default}``
environment expansion; ``${world.x}`` placeholders are recognised here and filled at resolution."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import yaml

from bike.config import short_repr
from harness.spec.errors import SpecError
from harness.spec.models import DATASET_EXTRA_FIELDS, SECTION_MODELS, TOP_LEVEL_FIELDS, text_problem

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_WORLD_RE = re.compile(r"\$\{world\.([A-Za-z_][A-Za-z0-9_]*)\}")


def _is_placeholder(value: Any) -> bool:
    """Whether ``value`` holds a ``${world.x}`` placeholder."""
    return isinstance(value, str) and bool(_WORLD_RE.search(value))


# ---------------------------------------------------------------------------------- env expansion
def expand_env(value: Any, source: str | Path, where: str = "", env: Optional[Mapping[str, str]] = None) -> Any:
    """Expand ``${NAME}`` and ``${NAME:-default}`` in every string of ``value`` (recursively).

    ``${world.x}`` placeholders are left for resolution. An unset variable without a default is an
    error naming the file and the dotted field path.
    """
    env = os.environ if env is None else env
    if isinstance(value, dict):
        return {k: expand_env(v, source, f"{where}.{k}" if where else str(k), env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, source, f"{where}[{i}]", env) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def repl(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise SpecError(
            f"{source}: {where or '<root>'}: got {short_repr(value)}; environment variable {name} is not set "
            f"(set it, or write ${{{name}:-default}})"
        )

    out = _ENV_RE.sub(repl, value)
    rest = _WORLD_RE.sub("", out)
    if "${" in rest:
        raise SpecError(
            f"{source}: {where or '<root>'}: got {short_repr(value, 120)}; an unexpanded '${{' remains: expected "
            "${NAME} or ${NAME:-default} with a plain default (defaults are not expanded again: no nesting)"
        )
    return out


# ---------------------------------------------------------------------------------- text checks
#: Fields of free text (a newline is fine there): they reach no shell, script or table cell.
FREE_TEXT_FIELDS = frozenset({"description", "not_run_note", "note"})


def check_text(value: Any, source: str | Path, where: str = "", lines: Optional[list[str]] = None) -> list[str]:
    """Every key and string of ``value`` (recursively) checked with :func:`text_problem`; error lines
    ``  where: got ...; why``. Free-text fields (:data:`FREE_TEXT_FIELDS`) may hold newlines."""
    lines = [] if lines is None else lines
    if isinstance(value, dict):
        for k, v in value.items():
            at = f"{where}.{k}" if where else str(k)
            if isinstance(k, str):
                why = text_problem(k)
                if why:
                    lines.append(f"  {where or '<root>'}: key {short_repr(k, 80)}: {why}")
                    continue
            if isinstance(v, str) and str(k) in FREE_TEXT_FIELDS:
                why = text_problem(v, free=True)
                if why:
                    lines.append(f"  {at}: got {short_repr(v, 80)}; {why}")
                continue
            check_text(v, source, at, lines)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_text(v, source, f"{where}[{i}]", lines)
    elif isinstance(value, str):
        why = text_problem(value)
        if why:
            lines.append(f"  {where or '<root>'}: got {short_repr(value, 80)}; {why}")
    return lines


# ---------------------------------------------------------------------------------- dotted paths
def _canonical(path: str) -> Union[tuple[str, ...], str]:
    """The canonical field path of a dotted key, or a message saying why it names no field."""
    parts = tuple(str(path).split("."))
    if any(not p for p in parts):
        return f"got key {short_repr(path, 100)}; expected a dotted field path like model.frames"
    if parts[0] == "data":
        parts = ("dataset",) + parts[1:]
    if len(parts) == 1:
        if parts[0] in TOP_LEVEL_FIELDS or parts[0] in SECTION_MODELS:
            return parts
        return (
            f"got key {short_repr(path, 100)}; unknown field. Allowed: "
            f"{', '.join(sorted(TOP_LEVEL_FIELDS + tuple(SECTION_MODELS)))} or <section>.<field>"
        )
    if len(parts) != 2 or parts[0] not in SECTION_MODELS:
        return f"got key {short_repr(path, 100)}; expected <section>.<field> with section one of {', '.join(sorted(SECTION_MODELS))}"
    section, name = parts
    if section == "dataset" and name == "dataset":
        name = "name"
    allowed = _section_fields(section)
    if name not in allowed:
        return f"got key {short_repr(path, 100)}; unknown field {name!r} of {section}. Allowed: {', '.join(allowed)}"
    return (section, name)


def canonical_path(path: str, source: str | Path, where: str) -> tuple[str, ...]:
    """Normalise a dotted field path (``data.x`` → ``dataset.x``, ``dataset.dataset`` → ``dataset.name``)
    and check that it names a field. Returns ``(field,)`` or ``(section, field)``; raises SpecError."""
    result = _canonical(path)
    if isinstance(result, str):
        raise SpecError(f"{source}: {where}: {result}")
    return result


def _section_fields(section: str) -> list[str]:
    fields = list(SECTION_MODELS[section].model_fields)
    if section == "dataset":
        fields = [f for f in fields if f != "dataset"] + list(DATASET_EXTRA_FIELDS)
    return sorted(fields)


def flatten_overrides(
    overrides: Mapping[str, Any], source: str | Path, where: str, errors: Optional[list[str]] = None
) -> dict[tuple[str, ...], Any]:
    """Dotted overrides → ``{(section, field): value}``; a bare section with a mapping expands.

    Bad keys raise SpecError, or are appended to ``errors`` (as ``  where.key: message`` lines)
    when a list is given, so that one pass reports every mistake.
    """
    out: dict[tuple[str, ...], Any] = {}
    for key, value in overrides.items():
        at = f"{where}.{key}" if where else str(key)
        path = _canonical(str(key))
        problem = path if isinstance(path, str) else None
        if problem is None and len(path) == 1 and path[0] in SECTION_MODELS and not isinstance(value, dict):
            problem = f"got {short_repr(value)}; expected a mapping of {path[0]} fields (allowed: {', '.join(_section_fields(path[0]))})"
        if problem is not None:
            if errors is None:
                raise SpecError(f"{source}: {at}: {problem}")
            errors.append(f"  {at}: {problem}")
            continue
        if len(path) == 1 and path[0] in SECTION_MODELS:
            out.update(flatten_overrides({f"{path[0]}.{k}": v for k, v in value.items()}, source, where, errors))
        else:
            out[path] = value
    return out


def parse_overrides(items: Iterable[str], source: str = "command line") -> dict[str, Any]:
    """``["train.epochs=3", "model.pretrained=null"]`` → ``{"train.epochs": 3, ...}`` (values YAML-parsed)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError(f"{source}: got {short_repr(item)}; expected key=value with a dotted key, e.g. train.epochs=3")
        problems = check_text({key: raw}, source)
        if problems:
            raise SpecError(f"{source}: invalid override\n" + "\n".join(problems))
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise SpecError(f"{source}: {key}: got {short_repr(raw)}; not a YAML value ({short_repr(str(exc), 300)})") from None
        canonical_path(key, source, key)
        out[key] = value
    return out

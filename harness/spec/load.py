"""Loading a spec: read the YAML, expand ``${ENV}``, validate every section, scale and variant in one
pass (:func:`load_spec`, :func:`spec_from_dict`); every error names file, field, value and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import yaml
from pydantic import ValidationError

from bike.config import MAX_SEED, format_validation_error, read_yaml_file, short_repr
from harness.spec.errors import SpecError, _format_pydantic
from harness.spec.models import DATASET_EXTRA_FIELDS, SECTION_MODELS, WORLD_SPLITS, InitFromSpec, Spec
from harness.spec.overrides import (
    _is_placeholder,
    _section_fields,
    check_text,
    expand_env,
    flatten_overrides,
    parse_overrides,
)


def _check_values(section: str, values: Mapping[str, Any], source: str | Path, where: str) -> list[str]:
    """Validate the given (non-placeholder) field values of one section; return error lines.

    Cross-field checks (errors without a field location) wait for the full resolution.
    """
    cls = SECTION_MODELS[section]
    data = {k: v for k, v in values.items() if not _is_placeholder(v) and k not in DATASET_EXTRA_FIELDS}
    if section == "dataset" and "name" in values and not _is_placeholder(values["name"]):
        data["dataset"] = values["name"]
    lines: list[str] = []
    if section == "dataset" and "world" in values:
        world = values["world"]
        if world not in (None, False, "auto") + WORLD_SPLITS:
            lines.append(
                f"  {where}.world: got {short_repr(world)}; expected one of {('auto',) + WORLD_SPLITS} or null"
            )
    try:
        cls.model_validate(data)
    except ValidationError as exc:
        text = format_validation_error(source, exc, prefix=where)
        for err, line in zip(exc.errors(), text.splitlines()[1:]):
            if err["loc"]:
                lines.append(line.replace(f"{where}.dataset:", f"{where}.name:"))
    return lines


def _check_top(name: str, value: Any, where: str) -> list[str]:
    allowed: dict[str, tuple[Any, ...]] = {"profile": ("official", "paper"), "stage": ("video", "attributes", "eval")}
    if name in allowed and value not in allowed[name]:
        return [f"  {where}: got {short_repr(value)}; expected one of {allowed[name]}"]
    if name == "seed" and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED):
        return [f"  {where}: got {short_repr(value)}; expected an integer in 0..{MAX_SEED}"]
    if name == "init_from" and value is not None and not isinstance(value, str):
        return [f"  {where}: got {short_repr(value)}; expected a checkpoint path (variants use init_from: {{variant: X}})"]
    return []


def _check_dotted(flat: Mapping[tuple[str, ...], Any], source: str | Path, where: str) -> list[str]:
    by_section: dict[str, dict[str, Any]] = {}
    lines: list[str] = []
    for path, value in flat.items():
        if len(path) == 1:
            lines += _check_top(path[0], value, f"{where}.{path[0]}" if where else path[0])
        else:
            by_section.setdefault(path[0], {})[path[1]] = value
    for section, values in by_section.items():
        lines += _check_values(section, values, source, f"{where}.{section}" if where else section)
    return lines


# ---------------------------------------------------------------------------------- YAML
#: Most nodes a YAML document may expand to, aliases counted at every use (a 1 KB "billion laughs"
#: alias bomb expands to millions; the largest shipped spec to a few hundred).
MAX_YAML_NODES = 20_000


class StrictYAMLLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate mapping keys (a second variant silently replacing the
    first) and documents whose aliases expand past :data:`MAX_YAML_NODES` nodes."""

    def construct_document(self, node: yaml.Node) -> Any:
        sizes: dict[int, int] = {}

        def size(n: yaml.Node, depth: int = 0) -> int:
            if id(n) in sizes:
                return sizes[id(n)]
            if depth > 200:
                raise yaml.constructor.ConstructorError(
                    None, None, f"nesting deeper than 200 levels; expected a spec of at most 200", n.start_mark)
            sizes[id(n)] = 1  # a recursive alias counts once
            total = 1
            if isinstance(n, yaml.MappingNode):
                total += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in n.value)
            elif isinstance(n, yaml.SequenceNode):
                total += sum(size(v, depth + 1) for v in n.value)
            sizes[id(n)] = min(total, MAX_YAML_NODES + 1)
            return sizes[id(n)]

        if size(node) > MAX_YAML_NODES:
            raise yaml.constructor.ConstructorError(
                None, None, f"the document expands to more than {MAX_YAML_NODES} nodes (aliases counted at each use); "
                "expected a spec without alias bombs", node.start_mark)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: SafeLoader reports it
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {short_repr(key, 80)} (first at line {first}); each key may appear "
                        "once in a mapping", key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_strict_yaml(path: str | Path, error: type[Exception], what: str) -> Any:
    """The content of a YAML file read with :class:`StrictYAMLLoader`; every problem raises ``error``
    naming the file (missing, a directory, not UTF-8, bad YAML, duplicate keys, alias bombs)."""
    return read_yaml_file(path, error, what=what, loader=StrictYAMLLoader)


# ---------------------------------------------------------------------------------- loading
def load_spec(
    path: str | Path,
    overrides: Union[Sequence[str], Mapping[str, Any], None] = None,
    env: Optional[Mapping[str, str]] = None,
) -> Spec:
    """Read, expand and validate a spec file; ``overrides`` are ``key=value`` strings or a dotted dict.

    Raises :class:`SpecError` naming the file, the dotted field path, the value and what is allowed.
    """
    path = Path(path)
    raw = read_strict_yaml(path, SpecError, what="spec file")
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: <root>: got {type(raw).__name__}; expected a mapping of spec fields")
    raw = expand_env(raw, path, env=env)
    problems = check_text(raw, path)
    if problems:
        raise SpecError("\n".join([f"{path}: invalid text in the spec ({len(problems)} error(s))"] + problems[:20]))
    spec = spec_from_dict(raw, source=path)
    spec._path = path.resolve()
    check_cells_exist(spec, path)
    if overrides:
        cli = parse_overrides(overrides) if not isinstance(overrides, Mapping) else dict(overrides)
        lines: list[str] = []
        flat = flatten_overrides(cli, "command line", "", lines)
        lines += _check_dotted(flat, "command line", "")
        if lines:
            raise SpecError("\n".join([f"command line (for {path}): invalid override(s)"] + lines))
        spec._cli_overrides = cli
    return spec


def check_cells_exist(spec: Spec, source: str | Path) -> None:
    """Every cell a spec fills (or lists as paper-only) must be a published cell of the registry
    (``harness/data/paper_numbers.yaml``); a typo or an invented row is refused, naming the spec, the
    variant and the nearest registry keys."""
    import difflib

    from harness.registry import load_registry

    known = sorted({f"{e.table}/{e.row}/{e.column}" for e in load_registry().entries})
    known_set = set(known)
    lines: list[str] = []
    places = [(f"variants.{name}.cells", v.cells) for name, v in spec.variants.items()] + [("paper_only", spec.paper_only)]
    for where, cells in places:
        for i, cell in enumerate(cells):
            key = f"{cell.table}/{cell.row}/{cell.column}"
            if key not in known_set:
                near = difflib.get_close_matches(key, known, n=3, cutoff=0.5) or [k for k in known if k.startswith(f"{cell.table}/")][:5]
                lines.append(f"  {where}[{i}]: cell {key!r} is not in the registry of published numbers; nearest: "
                             f"{', '.join(near) or 'none'}")
    if lines:
        raise SpecError("\n".join([f"{source}: {len(lines)} cell(s) that the paper does not have "
                                    "(harness/data/paper_numbers.yaml)"] + lines))


def spec_from_dict(raw: Mapping[str, Any], source: str | Path = "<spec>") -> Spec:
    """Validate an already-parsed spec mapping (no env expansion); see :func:`load_spec`."""
    try:
        spec = Spec.model_validate(dict(raw))
    except ValidationError as exc:
        raise SpecError(_format_pydantic(source, exc, "", Spec)) from None
    spec._path = Path(str(source))
    lines: list[str] = []
    for section in SECTION_MODELS:
        values: dict[str, Any] = getattr(spec, section)
        for key in values:
            if key not in _section_fields(section):
                lines.append(
                    f"  {section}.{key}: got {short_repr(values[key])}; unknown field. Allowed: {', '.join(_section_fields(section))}"
                )
        known = {k: v for k, v in values.items() if k in _section_fields(section)}
        lines += _check_values(section, known, source, section)
    for scale, overrides in spec.scales.items():
        where = f"scales.{scale}"
        lines += _check_dotted(flatten_overrides(overrides, source, where, lines), source, where)
    for vname, variant in spec.variants.items():
        base = f"variants.{vname}"
        lines += _check_dotted(flatten_overrides(variant.set, source, f"{base}.set", lines), source, f"{base}.set")
        for scale, overrides in variant.scales.items():
            where = f"{base}.scales.{scale}"
            lines += _check_dotted(flatten_overrides(overrides, source, where, lines), source, where)
        if isinstance(variant.init_from, InitFromSpec) and variant.init_from.spec is None:
            if variant.init_from.variant not in spec.variants:
                lines.append(
                    f"  {base}.init_from.variant: got {variant.init_from.variant!r}; expected a variant of "
                    f"this spec: {', '.join(spec.variants)}"
                )
            elif variant.init_from.variant == vname:
                lines.append(f"  {base}.init_from.variant: got {vname!r}; a variant cannot start from itself")
    if lines:
        raise SpecError("\n".join([f"{source}: invalid spec ({len(lines)} error(s))"] + lines))
    return spec

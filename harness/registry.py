"""Published numbers as data: load, validate and query ``harness/data/paper_numbers.yaml``.

The YAML holds one block per table (title, caption, row and column order with labels, the
``defaults`` its entries inherit) and a flat list of entries, one number each, keyed by
``(table, row, column)``. Loading merges each entry with its table's defaults, validates it with
pydantic and cross-checks the references (rows, columns, printed gains, re-reported cells); every
problem is reported as ``<file>: entries[<i>] (table .., row .., column ..): field '<f>': ...``.

    >>> reg = load_registry()
    >>> reg.get(table="6a", row="mean_pool", column="top1").value
    76.8
    >>> [e.row for e in reg.find(table="6a", column="top1")]
    ['mean_pool', 'vcs', 'vcs_transf', 'vcs_transf_frozen']
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Optional, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bike.config import read_yaml_file

DEFAULT_PATH = Path(__file__).resolve().parent / "data" / "paper_numbers.yaml"

#: ``mAP_running``: the number the released Charades test prints (a batch-weighted average of running
#: mAPs; ``bike.metrics.charades_running_map``), a different quantity from the true ``mAP``.
Metric = Literal["top1", "top5", "mAP", "mAP_running", "mca", "gflops_per_view", "params_m"]
#: The result metric (result.json) each registry kind is measured by, where one name fits only one kind.
RESULT_METRIC_OF_KIND = {"mAP": "mAP", "mAP_running": "mAP_official_running"}
Profile = Literal["official", "paper", "external"]

SLUG_PATTERN = r"^[A-Za-z0-9_+*.\-]+$"
PROTOCOL_PATTERN = r"^(closed|zero_shot_half|zero_shot_full|zero_shot_k600|multi_label|few_shot_[1-9][0-9]*)$"
VIEWS_PATTERN = r"^[1-9][0-9]*x[1-9][0-9]*$"
# A printed gain agrees with its operands when |printed - (a - b)| <= this (numbers carry 1-2 decimals).
DELTA_CONSISTENCY_TOL = 0.051

_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml is ~5x faster when present


class RegistryError(ValueError):
    """The registry file cannot be used; the message names the file, the entry and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


def _printed_decimals(raw: Any) -> Optional[int]:
    """Decimals as written in the YAML: ``84.0`` -> 1, ``86.63`` -> 2, ``830`` -> 0; None if not a number."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return 0
    if isinstance(raw, float):
        text = repr(raw)
        return len(text.split(".", 1)[1]) if "." in text and "e" not in text else 1
    return None


def _to_str(value: Any) -> Any:
    """YAML reads `table: 1` as an int; table ids are strings."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class _Keys(_Strict):
    """Keys an entry inherits from its table's ``defaults`` (all optional there)."""

    dataset: Optional[str] = None
    method: Optional[str] = None
    backbone: Optional[str] = None
    frames: Optional[int] = Field(None, ge=1)
    resolution: Optional[int] = Field(None, ge=1)
    views: Optional[str] = Field(None, pattern=VIEWS_PATTERN)
    protocol: Optional[str] = Field(None, pattern=PROTOCOL_PATTERN)
    profile: Optional[Profile] = None
    metric: Optional[Metric] = None
    pretrain: Optional[str] = None
    source: Optional[str] = None


class TableDefaults(_Keys):
    """A table's ``defaults`` block."""


class PaperEntry(_Keys):
    """One published number, fully resolved (table defaults merged in).

    ``value`` is in percentage points for accuracy-like metrics (GFLOPs / M parameters otherwise);
    ``std`` is the printed standard deviation; ``decimals`` the printed precision; ``delta_of`` marks
    a printed gain (``value = minuend - subtrahend``, both ``"row:column"`` of the same table).
    """

    table: str
    row: str = Field(pattern=SLUG_PATTERN)
    column: str = Field(pattern=SLUG_PATTERN)
    value: float
    std: Optional[float] = Field(None, ge=0)
    method: str = "BIKE"
    dataset: str
    protocol: str = Field(pattern=PROTOCOL_PATTERN)
    profile: Profile
    metric: Metric
    source: str
    line: Optional[int] = Field(None, ge=1)
    delta_of: Optional[tuple[str, str]] = None
    same_setting_as: Optional[str] = None
    approx: bool = False
    note: Optional[str] = None
    decimals: int = Field(1, ge=0, le=6)
    std_decimals: int = Field(1, ge=0, le=6)

    _table_to_str = field_validator("table", mode="before")(_to_str)

    @model_validator(mode="before")
    @classmethod
    def _printed_precision(cls, data: Any) -> Any:
        """Record the printed precision of ``value``/``std`` unless given: 84.0 -> 1, 86.63 -> 2, 830 -> 0."""
        if isinstance(data, dict):
            for field, target in (("value", "decimals"), ("std", "std_decimals")):
                if target not in data and field in data:
                    places = _printed_decimals(data[field])
                    if places is not None:
                        data = {**data, target: places}
        return data

    @field_validator("delta_of")
    @classmethod
    def _refs_are_row_column(cls, value: Optional[tuple[str, str]]) -> Optional[tuple[str, str]]:
        if value is None:
            return value
        for ref in value:
            if ref.count(":") != 1:
                raise ValueError(f"expected 'row:column', got {ref!r}")
        return value

    @field_validator("same_setting_as")
    @classmethod
    def _ref_is_table_row_column(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and value.count(":") != 2:
            raise ValueError(f"expected 'table:row:column', got {value!r}")
        return value

    @property
    def key(self) -> str:
        """``"table/row/column"``: the cell key shared with results and baselines."""
        return cell_key(self.table, self.row, self.column)

    @property
    def is_gain(self) -> bool:
        """A printed gain (an arrow "+2.5%" or "(+1.7)"), not a measured number."""
        return self.delta_of is not None

    def formatted(self, with_std: bool = True) -> str:
        """The number as printed, e.g. ``"86.6 ± 3.4"`` or ``"88.1"``."""
        text = f"{self.value:.{self.decimals}f}"
        if with_std and self.std is not None:
            text += f" ± {self.std:.{self.std_decimals}f}"
        return text


class ColumnSpec(_Strict):
    """A column of a table, in the paper's order."""

    id: str = Field(pattern=SLUG_PATTERN)
    label: str
    metric: Metric = "top1"
    derived: bool = Field(False, description="Printed gains computed from other cells of the row/table.")
    settings: dict[str, Any] = Field(default_factory=dict)


class RowSpec(_Strict):
    """A row of a table, in the paper's order."""

    id: str = Field(pattern=SLUG_PATTERN)
    label: str
    group: Optional[str] = None
    annotations: dict[str, str] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)
    note: Optional[str] = None


class TableSpec(_Strict):
    """A table's layout and the keys its entries inherit."""

    id: str
    title: str
    caption: str = ""
    source: str
    defaults: TableDefaults = TableDefaults()
    annotation_columns: list[str] = Field(default_factory=list)
    columns: list[ColumnSpec]
    rows: list[RowSpec]

    _id_to_str = field_validator("id", mode="before")(_to_str)

    @property
    def row_ids(self) -> list[str]:
        return [r.id for r in self.rows]

    @property
    def column_ids(self) -> list[str]:
        return [c.id for c in self.columns]

    def row(self, row_id: str) -> RowSpec:
        for r in self.rows:
            if r.id == row_id:
                return r
        raise KeyError(_missing_message("row", row_id, self.row_ids, f"table {self.id!r}"))

    def column(self, column_id: str) -> ColumnSpec:
        for c in self.columns:
            if c.id == column_id:
                return c
        raise KeyError(_missing_message("column", column_id, self.column_ids, f"table {self.id!r}"))


class _RegistryFile(_Strict):
    schema_version: Literal[1]
    paper: dict[str, Any] = Field(default_factory=dict)
    sources: dict[str, str] = Field(default_factory=dict)
    tables: list[TableSpec]
    entries: list[dict[str, Any]]


def cell_key(table: str, row: str, column: str) -> str:
    """The canonical cell key ``"table/row/column"``."""
    return f"{table}/{row}/{column}"


def _missing_message(kind: str, name: str, candidates: Sequence[str], where: str = "") -> str:
    near = difflib.get_close_matches(str(name), list(candidates), n=5, cutoff=0.4)
    loc = f" in {where}" if where else ""
    hint = f"; near matches: {', '.join(near)}" if near else ""
    shown = ", ".join(candidates[:40]) + (" ..." if len(candidates) > 40 else "")
    return f"no {kind} {name!r}{loc}{hint} (known: {shown})"


def _format_pydantic(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<entry>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "required (give it in the entry or in the table's defaults)"
        out.append(f"field {loc!r}: {msg} (got {err.get('input')!r})")
    return out


def _settings_errors(settings: Mapping[str, Any]) -> list[str]:
    """Dotted RunConfig paths that do not exist (``model.interaction`` exists, ``model.foo`` not)."""
    from bike.config import RunConfig

    errors = []
    for dotted in settings:
        model: Any = RunConfig
        for part in dotted.split("."):
            fields = getattr(model, "model_fields", None)
            if fields is None or part not in fields:
                errors.append(f"settings key {dotted!r} is not a RunConfig field")
                break
            annotation = fields[part].annotation
            model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return errors


class Registry:
    """The validated published numbers: query by any key subset, table layouts, consistency checks."""

    def __init__(
        self,
        tables: Sequence[TableSpec],
        entries: Sequence[PaperEntry],
        path: Optional[Path] = None,
        paper: Optional[Mapping[str, Any]] = None,
        sources: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.path = path
        self.paper = dict(paper or {})
        self.sources = dict(sources or {})
        self._tables = {t.id: t for t in tables}
        self._entries = tuple(entries)
        self._by_key = {e.key: e for e in self._entries}

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path | None = None) -> "Registry":
        """Read and validate a registry YAML (default: the packaged ``paper_numbers.yaml``)."""
        path = Path(path) if path is not None else DEFAULT_PATH
        raw = read_yaml_file(path, RegistryError, loader=_SAFE_LOADER)
        if not isinstance(raw, dict):
            raise RegistryError(f"{path}: expected a mapping with 'tables' and 'entries', got {type(raw).__name__}")
        try:
            doc = _RegistryFile.model_validate(raw)
        except ValidationError as exc:
            lines = []
            for err in exc.errors():
                loc = err["loc"]
                where = ".".join(str(p) for p in loc)
                if len(loc) >= 2 and loc[0] == "tables" and isinstance(loc[1], int):
                    tables_raw = raw.get("tables") or []
                    tid = tables_raw[loc[1]].get("id") if loc[1] < len(tables_raw) and isinstance(tables_raw[loc[1]], dict) else None
                    where = f"tables[{loc[1]}] (table {tid!r}): field {'.'.join(str(p) for p in loc[2:]) or '<table>'!r}"
                elif len(loc) >= 2 and loc[0] == "entries" and isinstance(loc[1], int):
                    where = f"entries[{loc[1]}]: expected a mapping with table/row/column/value"
                msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
                lines.append(f"{path}: {where}: {msg} (got {err.get('input')!r})")
            raise RegistryError("\n".join(lines)) from None
        return cls._build(path, doc)

    @classmethod
    def _build(cls, path: Path, doc: _RegistryFile) -> "Registry":
        errors: list[str] = []
        tables: dict[str, TableSpec] = {}
        for ti, table in enumerate(doc.tables):
            where = f"{path}: tables[{ti}] (table {table.id!r})"
            if table.id in tables:
                errors.append(f"{where}: duplicate table id")
            tables[table.id] = table
            for kind, ids in (("row", table.row_ids), ("column", table.column_ids)):
                dupes = sorted({i for i in ids if ids.count(i) > 1})
                if dupes:
                    errors.append(f"{where}: duplicate {kind} ids {dupes}")
            for row in table.rows:
                unknown = set(row.annotations) - set(table.annotation_columns)
                if unknown:
                    errors.append(
                        f"{where}: row {row.id!r}: annotations {sorted(unknown)} not in annotation_columns {table.annotation_columns}"
                    )
                errors += [f"{where}: row {row.id!r}: {m}" for m in _settings_errors(row.settings)]
            for col in table.columns:
                errors += [f"{where}: column {col.id!r}: {m}" for m in _settings_errors(col.settings)]

        entries: list[PaperEntry] = []
        seen: dict[str, int] = {}
        for i, raw in enumerate(doc.entries):
            label = f"entries[{i}] (table {_to_str(raw.get('table'))!r}, row {raw.get('row')!r}, column {raw.get('column')!r})"
            where = f"{path}: {label}"
            table = tables.get(_to_str(raw.get("table")))
            if table is None:
                errors.append(f"{where}: field 'table': " + _missing_message("table", str(raw.get("table")), list(tables)))
                continue
            merged = {k: v for k, v in table.defaults.model_dump().items() if v is not None}
            merged.update(raw)
            if "metric" not in raw and raw.get("column") in table.column_ids:
                merged["metric"] = table.column(raw["column"]).metric
            merged["source"] = cls._citation(doc.sources, table, raw.get("source"), raw.get("line"))
            try:
                entry = PaperEntry.model_validate(merged)
            except ValidationError as exc:
                errors += [f"{where}: {m}" for m in _format_pydantic(exc)]
                continue
            if entry.row not in table.row_ids:
                errors.append(f"{where}: field 'row': " + _missing_message("row", entry.row, table.row_ids, f"table {table.id!r}"))
                continue
            if entry.column not in table.column_ids:
                errors.append(
                    f"{where}: field 'column': " + _missing_message("column", entry.column, table.column_ids, f"table {table.id!r}")
                )
                continue
            if entry.key in seen:
                errors.append(f"{where}: duplicate cell {entry.key!r} (first at entries[{seen[entry.key]}])")
                continue
            derived = table.column(entry.column).derived
            if derived != entry.is_gain:
                errors.append(
                    f"{where}: field 'delta_of': "
                    + ("required in the derived column" if derived else "only allowed in a derived column")
                    + f" {entry.column!r}"
                )
            seen[entry.key] = i
            entries.append(entry)

        keys = {e.key: e for e in entries}
        for e in entries:
            where = f"{path}: entries[{seen[e.key]}] (table {e.table!r}, row {e.row!r}, column {e.column!r})"
            for ref in e.delta_of or ():
                r, c = ref.split(":")
                if cell_key(e.table, r, c) not in keys:
                    errors.append(f"{where}: field 'delta_of': {ref!r} is not a cell of table {e.table!r}")
            if e.same_setting_as is not None and cell_key(*e.same_setting_as.split(":")) not in keys:
                errors.append(f"{where}: field 'same_setting_as': {e.same_setting_as!r} is not a registry cell")
        if errors:
            raise RegistryError(f"{path}: {len(errors)} problem(s)\n  " + "\n  ".join(errors))
        return cls(list(tables.values()), entries, path=path, paper=doc.paper, sources=doc.sources)

    @staticmethod
    def _citation(sources: Mapping[str, str], table: TableSpec, entry_source: Any, line: Any) -> str:
        doc = entry_source if entry_source is not None else table.source
        text = f"{sources.get(doc, doc)}, {table.title.split(':')[0]}"
        if line is not None:
            text += f", line {line}"
        return text

    # ------------------------------------------------------------------ queries
    @property
    def entries(self) -> tuple[PaperEntry, ...]:
        return self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[PaperEntry]:
        return iter(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def tables(self) -> list[str]:
        """Table ids in file order ("1", "2", ..., "6a", ..., "A3", "readme_k400", ...)."""
        return list(self._tables)

    def table(self, table_id: str) -> TableSpec:
        """A table's layout (rows and columns in the paper's order, labels, defaults)."""
        table_id = str(table_id)
        if table_id not in self._tables:
            raise KeyError(_missing_message("table", table_id, list(self._tables)))
        return self._tables[table_id]

    def find(self, **keys: Any) -> list[PaperEntry]:
        """Entries whose fields equal every given key, in file order (``find(table="6a")``)."""
        unknown = set(keys) - set(PaperEntry.model_fields)
        if unknown:
            raise TypeError(f"unknown registry key(s) {sorted(unknown)}; known: {sorted(PaperEntry.model_fields)}")
        if "table" in keys:
            keys["table"] = _to_str(keys["table"])
        return [e for e in self._entries if all(getattr(e, k) == v for k, v in keys.items())]

    def get(self, table: Optional[str] = None, row: Optional[str] = None, column: Optional[str] = None, **keys: Any) -> PaperEntry:
        """The one entry matching the keys; ``KeyError`` with near matches when there is none."""
        given = {k: v for k, v in (("table", table), ("row", row), ("column", column)) if v is not None}
        given.update(keys)
        found = self.find(**given)
        if len(found) == 1:
            return found[0]
        if not found:
            raise KeyError(self._near_message(given))
        raise LookupError(
            f"{len(found)} entries match {given}; add keys to choose one of: " + ", ".join(e.key for e in found[:20])
        )

    def value(self, table: str, row: str, column: str) -> float:
        return self.get(table=table, row=row, column=column).value

    def entry(self, key: str) -> Optional[PaperEntry]:
        """The entry with cell key ``"table/row/column"``, or None."""
        return self._by_key.get(key)

    def _near_message(self, given: Mapping[str, Any]) -> str:
        probe = cell_key(given.get("table", ""), given.get("row", ""), given.get("column", ""))
        near = difflib.get_close_matches(probe, list(self._by_key), n=5, cutoff=0.5)
        msg = f"no registry entry matches {dict(given)}"
        if near:
            msg += f"; near matches: {', '.join(near)}"
        table = given.get("table")
        if table is not None and str(table) in self._tables:
            spec = self._tables[str(table)]
            msg += f"; table {spec.id!r} has rows {spec.row_ids} and columns {spec.column_ids}"
        elif table is not None:
            msg += "; " + _missing_message("table", str(table), list(self._tables))
        return msg

    def counts(self) -> dict[str, int]:
        """Number of entries per table, in table order."""
        out = {t: 0 for t in self._tables}
        for e in self._entries:
            out[e.table] += 1
        return out

    def cell_settings(self, table: str, row: str, column: str) -> dict[str, Any]:
        """Dotted RunConfig settings hinted for a cell (column settings override row settings)."""
        spec = self.table(table)
        return {**spec.row(row).settings, **spec.column(column).settings}

    def inconsistencies(self, tolerance: float = DELTA_CONSISTENCY_TOL) -> list[str]:
        """Printed gains that disagree with their operands, and re-reported cells whose values differ."""
        out = []
        for e in self._entries:
            if e.delta_of is not None:
                a, b = (self._by_key[cell_key(e.table, *ref.split(":"))].value for ref in e.delta_of)
                if abs((a - b) - e.value) > tolerance:
                    out.append(f"{e.key}: printed gain {e.value:+.1f} but {a} - {b} = {a - b:+.1f}")
            if e.same_setting_as is not None:
                other = self._by_key[cell_key(*e.same_setting_as.split(":"))]
                if abs(other.value - e.value) > tolerance:
                    out.append(f"{e.key}: {e.value} differs from the same setting {other.key} = {other.value}")
        return out


@functools.lru_cache(maxsize=4)
def _load_cached(path: str) -> Registry:
    return Registry.load(path)


def load_registry(path: str | Path | None = None) -> Registry:
    """The registry at ``path`` (default: the packaged one); cached per resolved path."""
    return _load_cached(str(Path(path).resolve() if path is not None else DEFAULT_PATH))

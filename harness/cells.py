"""Our result cells: :class:`ResultCell` (one number of ours for one paper cell), their validation
(:func:`coerce_results`) and the paper's printed gains derived from them (:func:`derive_gain_cells`).

Shared by ``harness.check`` (regression checks) and ``harness.tables`` (rendering), which both take
cells in this form; see ``harness.check`` for the results file that holds them.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.registry import Registry, cell_key

#: The scale of the paper's numbers (cells of other scales are not compared with them by default).
FULL_SCALE = "full"


class CheckError(ValueError):
    """Unusable input (results, baseline or tolerance file); the message names the file and field."""



class ResultCell(BaseModel):
    """One number of ours for one paper cell. Extra fields (e.g. ``n_videos``) are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)

    table: str
    row: str = Field(min_length=1)
    column: str = Field(min_length=1)
    value: float
    std: Optional[float] = Field(None, ge=0)
    scale: Optional[str] = None
    run_id: Optional[str] = None
    metric: Optional[str] = None
    variant: Optional[str] = None
    derived: bool = False

    @field_validator("table", mode="before")
    @classmethod
    def _table_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("value")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"must be a finite number, got {v}")
        return v

    @field_validator("row", "column", "variant")
    @classmethod
    def _no_separators(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and any(ch in v for ch in "/#"):
            raise ValueError(f"must not contain '/' or '#', got {v!r}")
        return v

    @property
    def paper_key(self) -> str:
        """``table/row/column``: the registry cell this result stands beside."""
        return cell_key(self.table, self.row, self.column)

    @property
    def key(self) -> str:
        """``table/row/column[#variant]``: unique per result."""
        return self.paper_key + (f"#{self.variant}" if self.variant else "")



def coerce_results(cells: Iterable[Union[ResultCell, Mapping[str, Any]]], source: str = "<results>", scale: Optional[str] = None) -> list[ResultCell]:
    """Validate cell dicts into :class:`ResultCell`s; ``scale`` fills cells that give none."""
    out: list[ResultCell] = []
    seen: dict[str, int] = {}
    errors: list[str] = []
    for i, raw in enumerate(cells):
        if isinstance(raw, ResultCell):
            cell = raw
        elif isinstance(raw, Mapping):
            data = dict(raw)
            if scale is not None and data.get("scale") is None:
                data["scale"] = scale
            try:
                cell = ResultCell.model_validate(data)
            except ValidationError as exc:
                for err in exc.errors():
                    loc = ".".join(str(p) for p in err["loc"]) or "<cell>"
                    errors.append(f"{source}: cells[{i}]: field {loc!r}: {err['msg']} (got {err.get('input')!r})")
                continue
        else:
            errors.append(f"{source}: cells[{i}]: expected a mapping with table/row/column/value, got {type(raw).__name__}")
            continue
        if cell.key in seen:
            errors.append(f"{source}: cells[{i}]: duplicate cell {cell.key!r} (first at cells[{seen[cell.key]}])")
            continue
        seen[cell.key] = i
        out.append(cell)
    if errors:
        raise CheckError("\n".join(errors))
    return out


def derive_gain_cells(results: Sequence[ResultCell], registry: Registry) -> list[ResultCell]:
    """Our values for the paper's printed gains (``delta_of`` cells) computable from our cells.

    A gain is derived per variant when both operands exist with that variant; cells already present
    in ``results`` are kept as given. Returns only the new, derived cells (``derived=True``).
    """
    have = {c.key: c for c in results}
    out: list[ResultCell] = []
    variants = sorted({c.variant for c in results}, key=lambda v: (v is not None, v or ""))
    for entry in registry:
        if entry.delta_of is None:
            continue
        for variant in variants:
            suffix = f"#{variant}" if variant else ""
            if entry.key + suffix in have:
                continue
            refs = [have.get(cell_key(entry.table, *ref.split(":")) + suffix) for ref in entry.delta_of]
            if refs[0] is None or refs[1] is None:
                continue
            scales = {refs[0].scale, refs[1].scale}
            out.append(
                ResultCell(
                    table=entry.table,
                    row=entry.row,
                    column=entry.column,
                    value=refs[0].value - refs[1].value,
                    scale=refs[0].scale if len(scales) == 1 else "mixed",
                    metric=entry.metric,
                    variant=variant,
                    derived=True,
                )
            )
    return out

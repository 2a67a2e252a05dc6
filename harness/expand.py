"""Expansion: specs → a plan of runs (frozen RunConfigs keyed by their content hash), in dependency order.

* A run's identity is ``config.content_hash()``; two variants (or two specs) that resolve to the same
  configuration share one :class:`PlannedRun`, which fills the cells of both.
* ``init_from: {variant: X}`` (or ``{spec: path, variant: X}``) makes the run depend on X's run and
  sets ``config.init_from`` to X's run directory, so the dependant's hash changes whenever X changes.
* The code version (git commit + dirty flag) is recorded beside the run (meta.json), not hashed.
"""

from __future__ import annotations

import functools
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from bike.config import RunConfig
from harness.rundir import RunDir, runs_root
from harness.spec import (
    InitFromSpec,
    ResourceSpec,
    Spec,
    SpecError,
    WorldSplit,
    load_spec,
    resolve_config,
)

WorldProvider = Callable[[str], WorldSplit]
KIND_OF_STAGE = {"video": "train", "attributes": "train", "eval": "evaluate"}


@dataclass(frozen=True)
class CellRef:
    """A table cell filled by a run: ``metric`` of its result.json goes to (table, row, column)."""

    table: str
    row: str
    column: str
    metric: str
    spec: str
    variant: str


@dataclass(frozen=True)
class NotRunCell:
    """A cell no run of this plan fills (paper-only, or its variant does not run at this scale)."""

    table: str
    row: str
    column: str
    spec: str
    variant: Optional[str]
    reason: str


@dataclass(frozen=True)
class PlannedRun:
    run_id: str
    config: RunConfig
    kind: str  # a job kind of harness.jobs: "train" or "evaluate"
    run_dir: Path
    dependencies: tuple[str, ...]
    cells: tuple[CellRef, ...]
    requested_by: tuple[tuple[str, str], ...]  # (spec name, variant)
    scale: str
    resources: ResourceSpec
    spec_path: str

    def with_request(self, cells: Iterable[CellRef], spec: str, variant: str) -> "PlannedRun":
        new_cells = self.cells + tuple(c for c in cells if c not in self.cells)
        req = self.requested_by if (spec, variant) in self.requested_by else self.requested_by + ((spec, variant),)
        return PlannedRun(**{**self.__dict__, "cells": new_cells, "requested_by": req})

    def meta(self) -> dict[str, Any]:
        """What the driver records in meta.json (plus the code version)."""
        return {
            "run_id": self.run_id,
            "kind": self.kind,
            "stage": self.config.stage,
            "scale": self.scale,
            "dependencies": list(self.dependencies),
            "requested_by": [{"spec": s, "variant": v, "scale": self.scale} for s, v in self.requested_by],
            "spec_path": self.spec_path,
            "code": code_version(),
        }


@dataclass
class Plan:
    scale: str
    results: Path
    runs: list[PlannedRun]  # topological order
    not_run: list[NotRunCell] = field(default_factory=list)
    specs: list[Spec] = field(default_factory=list)

    @functools.cached_property
    def by_id(self) -> dict[str, PlannedRun]:
        return {r.run_id: r for r in self.runs}

    def waves(self) -> list[list[PlannedRun]]:
        """Runs grouped by depth: wave k depends only on waves < k."""
        depth: dict[str, int] = {}
        for run in self.runs:
            depth[run.run_id] = 1 + max((depth[d] for d in run.dependencies), default=-1)
        waves: list[list[PlannedRun]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
        for run in self.runs:
            waves[depth[run.run_id]].append(run)
        return waves

    def cells(self) -> list[tuple[CellRef, str]]:
        """Every (cell, run_id) pair of the plan, in plan order."""
        return [(cell, run.run_id) for run in self.runs for cell in run.cells]


@functools.lru_cache(maxsize=None)
def code_version(root: Optional[str] = None) -> dict[str, Any]:
    """``{"commit": sha | None, "dirty": bool | None}`` of the git checkout holding the harness."""
    where = root or str(Path(__file__).resolve().parent.parent)

    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", "-C", where, *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}



def bike_world(root: str | Path, size: Optional[str] = None, seed: Optional[int] = None, build: bool = True,
               log: Optional[Callable[[str], None]] = None) -> WorldProvider:
    """A world provider backed by ``bike.world.build_world`` (called once, lazily, on first use).

    ``size``/``seed`` None: those of the world already at ``root``, else ``default`` / 0. A world of
    another size or seed at ``root`` is never replaced: ``build_world`` refuses with the reason.
    ``build=False`` refuses to build a missing world (``bikebench status`` must not start one).
    ``log`` is told which world is used (root, size, seed, config hash, checkpoint SHA-256).
    """
    info_cache: dict[str, Any] = {}
    root = Path(root).resolve()

    def provider(split: str) -> WorldSplit:
        if "info" not in info_cache:
            from bike.world.build import WorldError, read_manifest

            if not build and not (root / "manifest.json").exists():
                raise SpecError(f"the embedded world is not built at {root}; run `bikebench world build --root {root}`")
            try:
                found = read_manifest(root) if root.is_dir() else None
            except WorldError as exc:
                raise SpecError(str(exc)) from None
            want_size = size or (found or {}).get("size") or "default"
            want_seed = seed if seed is not None else int((found or {}).get("seed", 0))
            from bike.world import build_world  # lazy: torch and the world generator
            from bike.world.config import settings_of

            # a world built with settings (`bikebench world build --set`) is used with them
            same = found is not None and (found.get("size"), found.get("seed")) == (want_size, want_seed)
            settings = settings_of(found) if same else {}
            try:
                info_cache["info"] = info = build_world(root, size=want_size, seed=want_seed, **settings)
            except WorldError as exc:
                raise SpecError(str(exc)) from None
            if log is not None:
                ident = getattr(info, "identity", {})
                log(f"world {root}: {ident.get('size')} seed {ident.get('seed')}, config {ident.get('config_hash')}, "
                    f"checkpoint sha256 {str(ident.get('checkpoint_sha256'))[:12]}"
                    + (f", the runs' backbone its step {info.config.get('backbone_step')} (sha256 "
                       f"{ident['backbone_checkpoint_sha256'][:12]})" if "backbone_checkpoint_sha256" in ident else ""))
        info = info_cache["info"]
        values = {
            # the CLIP a run starts from; the attribute generator's own weights when they differ
            # (a world whose backbone is a pretraining snapshot: `--set backbone_step=N`), else null
            "checkpoint": str(getattr(info, "run_checkpoint", info.checkpoint)),
            "generator": str(info.generator_checkpoint) if getattr(info, "generator_checkpoint", None) else None,
            "model": str(getattr(info, "model_name", "bike-tiny")),
            "root": str(root),
            "frames": info.frames,
            "resolution": info.resolution,
            # the world's lexicons, by the names specs use (`attributes.lexicon: world`)
            "lexicons": {name: str(path) for name, path in getattr(info, "lexicons", {}).items()},
            # what makes two worlds give the same numbers (seed, config hash, checkpoint SHA-256)
            "identity": dict(getattr(info, "identity", {})),
        }
        return WorldSplit(data=dict(info.data_config(split)), values=values)

    return provider


def _find_spec_file(ref: str, referrer: Path) -> Path:
    """A spec path named by another spec: absolute, or relative to the working directory, the
    referring spec's directory, or that directory's parent (the repository root for experiments/)."""
    path = Path(ref).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, referrer.parent / path, referrer.parent.parent / path]
    for cand in candidates:
        if cand.is_file():
            return cand.resolve()
    raise SpecError(f"{referrer}: init_from.spec: got {ref!r}; no such spec file (looked in {', '.join(map(str, candidates))})")


class _Expander:
    def __init__(self, scale: str, results: Path, world: Optional[WorldProvider], absent_checkpoints: str = "skip"):
        self.scale = scale
        self.results = results.resolve()
        self.world = world
        self.absent_checkpoints = absent_checkpoints
        self.runs: dict[str, PlannedRun] = {}
        self.memo: dict[tuple[str, str], Optional[str]] = {}
        self.not_run: list[NotRunCell] = []
        self.specs: dict[str, Spec] = {}

    def spec_at(self, path: Path) -> Spec:
        key = str(path.resolve())
        if key not in self.specs:
            self.specs[key] = load_spec(path)
        return self.specs[key]

    def plan_variant(self, spec: Spec, variant: str, stack: tuple[tuple[str, str], ...] = ()) -> Optional[str]:
        """Plan ``variant`` (and its dependencies); its run_id, or None when it cannot run at this scale."""
        key = (str(spec.path), variant)
        if key in self.memo:
            return self.memo[key]
        if key in stack:
            chain = " -> ".join(f"{Path(s).name}:{v}" for s, v in stack + (key,))
            raise SpecError(f"{spec.path}: variants.{variant}.init_from: dependency cycle {chain}")
        v = spec.variants[variant]
        reason = ""
        dependency: Optional[str] = None
        if self.scale not in v.run_at:
            reason = v.not_run_note or f"variant {variant!r} does not run at scale {self.scale}"
        elif (isinstance(v.init_from, str) and v.source_url and self.absent_checkpoints == "skip"
              and not Path(v.init_from).expanduser().exists()):
            reason = f"{v.init_from} not found: download it from {v.source_url}"
        elif isinstance(v.init_from, InitFromSpec):
            dep_spec = spec
            if v.init_from.spec is not None:
                dep_spec = self.spec_at(_find_spec_file(v.init_from.spec, spec.path))
                if v.init_from.variant not in dep_spec.variants:
                    raise SpecError(
                        f"{spec.path}: variants.{variant}.init_from.variant: got {v.init_from.variant!r}; "
                        f"expected a variant of {dep_spec.path}: {', '.join(dep_spec.variants)}"
                    )
            dependency = self.plan_variant(dep_spec, v.init_from.variant, stack + (key,))
            if dependency is None:
                reason = f"depends on {dep_spec.name}.{v.init_from.variant}, which does not run at scale {self.scale}"
        if reason:
            self.memo[key] = None
            for c in v.cells:
                self.not_run.append(NotRunCell(c.table, c.row, c.column, spec.name, variant, reason))
            return None
        init_from = str(runs_root(self.results) / dependency) if dependency else None
        config = resolve_config(spec, variant, self.scale, world=self.world, init_from=init_from)
        run_id = config.content_hash()
        cells = tuple(CellRef(c.table, c.row, c.column, c.metric, spec.name, variant) for c in v.cells)
        if run_id in self.runs:
            self.runs[run_id] = self.runs[run_id].with_request(cells, spec.name, variant)
        else:
            self.runs[run_id] = PlannedRun(
                run_id=run_id,
                config=config,
                kind=KIND_OF_STAGE[config.stage],
                run_dir=runs_root(self.results) / run_id,
                dependencies=(dependency,) if dependency else (),
                cells=cells,
                requested_by=((spec.name, variant),),
                scale=self.scale,
                resources=spec.resources_for(variant, self.scale),
                spec_path=str(spec.path),
            )
        self.memo[key] = run_id
        return run_id


def expand(
    specs: Sequence[Spec] | Spec,
    scale: str,
    results: str | Path,
    world: Optional[WorldProvider] = None,
    only: Optional[Iterable[str]] = None,
    absent_checkpoints: str = "skip",
) -> Plan:
    """Expand specs into a :class:`Plan` at ``scale``; ``only`` limits to some variants (+ dependencies).

    Every variant is resolved and validated here, so an invalid spec fails before any submission.
    ``absent_checkpoints``: a variant that evaluates a released checkpoint (``init_from`` a file, with
    ``source_url``) that is not on disk is a not-run cell saying where to download it (``skip``), or is
    planned all the same (``plan``: ``bikebench rehearse``, which evaluates random weights in its place).
    """
    if absent_checkpoints not in ("skip", "plan"):
        raise ValueError(f"absent_checkpoints: got {absent_checkpoints!r}; expected 'skip' or 'plan'")
    if isinstance(specs, Spec):
        specs = [specs]
    exp = _Expander(scale, Path(results), world, absent_checkpoints)
    wanted = set(only) if only else None
    for spec in specs:
        exp.specs[str(spec.path)] = spec
        if wanted is not None:
            unknown = wanted - set(spec.variants)
            if unknown and len(specs) == 1:
                raise SpecError(f"{spec.path}: no variant(s) {sorted(unknown)}; variants: {', '.join(spec.variants)}")
        for variant in spec.variants:
            if wanted is None or variant in wanted:
                exp.plan_variant(spec, variant)
        for cell in spec.paper_only:
            exp.not_run.append(
                NotRunCell(cell.table, cell.row, cell.column, spec.name, None, cell.note or "published number only")
            )
    return Plan(scale=scale, results=exp.results, runs=topological(exp.runs), not_run=exp.not_run, specs=list(specs))


def topological(runs: dict[str, PlannedRun]) -> list[PlannedRun]:
    """Runs ordered so that every dependency comes first (stable: planning order otherwise)."""
    order: list[PlannedRun] = []
    seen: set[str] = set()

    def visit(run_id: str, stack: tuple[str, ...]) -> None:
        if run_id in seen:
            return
        if run_id in stack:
            raise SpecError(f"dependency cycle between runs {' -> '.join(stack + (run_id,))}")
        for dep in runs[run_id].dependencies:
            visit(dep, stack + (run_id,))
        seen.add(run_id)
        order.append(runs[run_id])

    for run_id in runs:
        visit(run_id, ())
    return order


def prepare_run_dirs(plan: Plan) -> list[RunDir]:
    """Create each run directory with config.yaml, meta.json (code version) and a pending state."""
    dirs = []
    for run in plan.runs:
        rd = RunDir(run.run_dir)
        rd.prepare(run.config.to_yaml(), run.meta())
        dirs.append(rd)
    return dirs


def default_world_root(results: str | Path) -> Path:
    """Where the embedded world lives: ``$BIKE_WORLD``, else ``<results>/world``."""
    env = os.environ.get("BIKE_WORLD")
    return Path(env).resolve() if env else Path(results).resolve() / "world"


def resolve_source_run(
    ref: Any, results: str | Path = "results", world: Optional[WorldProvider] = None, world_size: str = "default"
) -> Path:
    """The run directory of ``ref.spec`` / ``ref.variant`` at ``ref.scale`` (default smoke).

    For ``harness.tuning``: ``ref`` is any object with ``spec``, ``variant`` and optional ``scale``.
    """
    scale = getattr(ref, "scale", None) or "smoke"
    spec = load_spec(ref.spec)
    if world is None:
        world = bike_world(default_world_root(results), size=world_size)
    plan = expand(spec, scale, results, world=world, only=[ref.variant])
    for run in plan.runs:
        if (spec.name, ref.variant) in run.requested_by:
            return run.run_dir
    reasons = [c.reason for c in plan.not_run if c.variant == ref.variant]
    raise SpecError(f"{ref.spec}: variant {ref.variant!r} has no run at scale {scale}" + (f": {reasons[0]}" if reasons else ""))

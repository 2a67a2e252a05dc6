"""``bikebench``: the command line of the harness.

    bikebench run SPEC [SPEC ...] [--scale smoke|full] [--executor local|slurm|debug] [--dry-run] [key=value ...]
    bikebench table6 [--scale smoke|full] [--executor local|slurm|debug] [--dry-run] [--lambda-from STUDY] [key=value ...]
    bikebench status [SPEC] [--scale smoke|full]
    bikebench sync
    bikebench world build [--size default|test] [--root DIR] [--seed N]
    bikebench check [...]            (harness.check; options: add_check_arguments)
    bikebench tune SWEEP [key=value ...] [--workers N] [--executor local|slurm|debug] [resources]   (harness.tuning)
    bikebench mlflow-uri

Every command takes ``--results DIR`` (default ./results, made absolute) and ``--tracking-uri URI``
(default ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<results>/mlflow.db``). Exit codes: 0 success,
1 some run failed (or a regression), 2 bad input (the message names the file, field and value).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from bike.config import ConfigError

SCALE_CHOICES = ("smoke", "full")
EXECUTOR_CHOICES = ("local", "slurm", "debug")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default="results", help="results directory (default: ./results)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///<results>/mlflow.db)")


def _world_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--world-root", default=None, help="embedded world (default: $BIKE_WORLD or <results>/world)")
    parser.add_argument("--world-size", default=None, choices=("default", "test"),
                        help="default: the size of the world at --world-root, else 'default'")
    parser.add_argument("--world-seed", type=int, default=None,
                        help="default: the seed of the world at --world-root, else 0 (a world of another seed there is "
                             "refused, never replaced)")


def _submit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scale", choices=SCALE_CHOICES, default="smoke")
    parser.add_argument("--executor", choices=EXECUTOR_CHOICES, default="local", help="submitit cluster, never auto-detected")
    parser.add_argument("--dry-run", action="store_true", help="expand and show the submissions; submit nothing")
    parser.add_argument("--json", action="store_true",
                        help="with --dry-run: one JSON object per planned run (run_id, spec, variant, kind, dependencies, "
                             "cells, resources, the complete resolved config) on stdout")
    parser.add_argument("--show-config", action="store_true",
                        help="with --dry-run: the same records as YAML, for people")
    parser.add_argument("--parallelism", type=int, default=1, help="local/debug: jobs at a time (default 1)")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow (run `bikebench sync` later)")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between job polls")
    res = parser.add_argument_group("resources (override the spec)")
    res.add_argument("--timeout-min", type=float, default=None)
    res.add_argument("--max-num-timeout", type=int, default=None)
    res.add_argument("--signal-delay-s", type=int, default=None)
    _slurm_options(res, gpus=True)


def _slurm_options(res: argparse._ArgumentGroup, gpus: bool, array_help: Optional[str] = None) -> None:
    """The SLURM resource flags (``gpus``: also --gpus-per-node, --nodes, --tasks-per-node)."""
    res.add_argument("--partition")
    if gpus:
        res.add_argument("--gpus-per-node", type=int)
        res.add_argument("--nodes", type=int)
        res.add_argument("--tasks-per-node", type=int)
    res.add_argument("--cpus-per-task", type=int)
    res.add_argument("--mem")
    res.add_argument("--time", help="SLURM time limit: minutes or [D-]HH:MM:SS")
    res.add_argument("--account")
    res.add_argument("--qos")
    res.add_argument("--constraint")
    res.add_argument("--array-parallelism", type=int, help=array_help)
    res.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE", help="extra sbatch option (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bikebench", description="Reproduce, track and tune BIKE (CVPR 2023).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the variants of one or more specs")
    p.add_argument("items", nargs="+", metavar="SPEC|key=value", help="spec files, then dotted key=value overrides")
    p.add_argument("--only", action="append", default=None, metavar="VARIANT", help="only this variant (+ its dependencies)")
    _common(p), _world_options(p), _submit_options(p)

    p = sub.add_parser("table6", help="run Table 6 and compare it with the paper")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--spec", default=None, help="Table 6 spec (default: experiments/table6.yaml)")
    p.add_argument("--lambda-from", default=None, metavar="STUDY",
                   help="fused (V+A) cells at the λ of an Optuna study: its best.json, its directory, or a study name "
                        "under <results>/studies (recomputed from the runs' cached scores; nothing re-runs)")
    _common(p), _world_options(p), _submit_options(p)

    p = sub.add_parser("status", help="state of every run (from the run directories)")
    p.add_argument("spec", nargs="?", default=None)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--scale", choices=SCALE_CHOICES, default="smoke")
    _common(p), _world_options(p)

    p = sub.add_parser("sync", help="replay run directories into MLflow")
    _common(p)

    p = sub.add_parser("world", help="the embedded miniature video world")
    wsub = p.add_subparsers(dest="world_command", required=True)
    wb = wsub.add_parser("build", help="build (or reuse) the world and its tiny CLIP")
    wb.add_argument("--size", default="default", choices=("default", "test"))
    wb.add_argument("--root", default=None, help="default: $BIKE_WORLD or <results>/world")
    wb.add_argument("--seed", type=int, default=0)
    wb.add_argument("--force", action="store_true", help="rebuild, replacing whatever world is at --root")
    _common(wb)

    p = sub.add_parser("check", help="regression check against the paper / the blessed baseline")
    add_check_arguments(p)

    p = sub.add_parser("tune", help="Optuna study on cached scores")
    p.add_argument("sweep")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///<results>/mlflow.db)")
    p.add_argument("--results", default="results", help="results directory of the default tracking URI")
    p.add_argument("--no-track", action="store_true", help="do not log the study to MLflow")
    p.add_argument("--workers", type=int, default=None,
                   help="workers sharing the study, submitted as ONE job array (default: the sweep's `workers`)")
    p.add_argument("--executor", choices=EXECUTOR_CHOICES, default=None,
                   help="where the workers run (default: the sweep's `executor`, else local); "
                        "one worker runs in this process unless slurm")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between polls of the worker array")
    res = p.add_argument_group("worker resources (override the sweep's `resources`)")
    res.add_argument("--timeout-min", type=float, default=None, help="wall-clock limit of each worker task")
    _slurm_options(res, gpus=False, array_help="how many worker tasks may run at once")

    p = sub.add_parser("mlflow-uri", help="print the tracking URI in use")
    _common(p)
    return parser


def _resources(args: argparse.Namespace):
    """Command-line resource overrides as a ResourceSpec (None when nothing was given)."""
    from harness.spec import ResourceSpec, SlurmSpec

    slurm: dict[str, Any] = {}
    for name in ("partition", "gpus_per_node", "nodes", "tasks_per_node", "cpus_per_task", "mem", "time",
                 "account", "qos", "constraint", "array_parallelism"):
        value = getattr(args, name, None)
        if value is not None:
            slurm[name] = value
    extra = {}
    for item in getattr(args, "sbatch", []) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"command line: --sbatch {item!r}: expected KEY=VALUE, e.g. --sbatch reservation=gpu")
        extra[key.lstrip("-")] = value
    if extra:
        slurm["additional"] = extra
    top = {k: getattr(args, k) for k in ("timeout_min", "max_num_timeout", "signal_delay_s") if getattr(args, k, None) is not None}
    if not slurm and not top:
        return None
    return ResourceSpec(**top, **({"slurm": SlurmSpec(**slurm)} if slurm else {}))


def _world(args: argparse.Namespace, results: Path, build: bool = True, quiet: bool = False):
    """The world provider of a command; ``quiet``: its line goes to stderr (stdout is machine output)."""
    from harness.expand import bike_world, default_world_root

    root = Path(args.world_root).resolve() if getattr(args, "world_root", None) else default_world_root(results)
    stream = sys.stderr if quiet else sys.stdout
    return bike_world(root, size=getattr(args, "world_size", None), seed=getattr(args, "world_seed", None), build=build,
                      log=lambda line: print(line, file=stream, flush=True))


def _drive_kwargs(args: argparse.Namespace, results: Path) -> dict[str, Any]:
    show = "json" if args.json else "yaml" if args.show_config else "text"
    if show != "text" and not args.dry_run:
        raise ConfigError(f"command line: --{'json' if args.json else 'show-config'} needs --dry-run")
    return dict(
        scale=args.scale, cluster=args.executor, results=results, tracking_uri=args.tracking_uri,
        dry_run=args.dry_run, world=_world(args, results, quiet=show != "text") if args.scale == "smoke" else None,
        resources=_resources(args), parallelism=args.parallelism, poll_s=args.poll, track=not args.no_track,
        show=show,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from harness.spec import load_spec
    from harness.drive import run_specs

    results = Path(args.results).resolve()
    paths = [i for i in args.items if "=" not in i]
    overrides = [i for i in args.items if "=" in i]
    if not paths:
        raise ConfigError("command line: no spec file given (bikebench run SPEC [key=value ...])")
    specs = [load_spec(p, overrides) for p in paths]
    drive = run_specs(specs, only=args.only, **_drive_kwargs(args, results))
    if args.dry_run:
        return 0
    for cell in drive.cells:
        print(f"{cell['table']}/{cell['row']}/{cell['column']}: {cell['value']:.2f} ({cell['run_id']})")
    for cell in drive.missing:
        print(f"{cell['table']}/{cell['row']}/{cell['column']}: – ({cell['reason']})")
    return 0 if drive.ok else 1


def cmd_table6(args: argparse.Namespace) -> int:
    from harness.table6 import TABLE6_SPEC, run_table6

    results = Path(args.results).resolve()
    study = None
    if args.lambda_from:  # read and checked before the world is built or anything is submitted
        from harness.tuning import load_study_lambda

        study = load_study_lambda(args.lambda_from, results)
    kwargs = _drive_kwargs(args, results)
    drive = run_table6(spec_path=args.spec or TABLE6_SPEC, overrides=args.overrides, lambda_from=study, **kwargs)
    return 0 if drive.ok else 1


def status_rows(results: Path, plan: Optional[Any] = None) -> list[dict[str, str]]:
    """One row per run: run id, status, job id, what asked for it."""
    from harness.executor import run_status, sacct_states
    from harness.rundir import RunDir, list_run_dirs

    dirs = [RunDir(r.run_dir) for r in plan.runs] if plan is not None else list_run_dirs(results)
    slurm_ids = [str(s["job_id"]) for s in (rd.last_submission() for rd in dirs) if s and s.get("cluster") == "slurm"]
    known = sacct_states(slurm_ids) if slurm_ids else {}  # one sacct call for every recorded SLURM job

    def sacct(ids: Sequence[str]) -> dict[str, str]:
        return {i: known[i] for i in ids if i in known}

    rows = []
    for rd in dirs:
        meta = rd.read_meta() or {}
        sub = rd.last_submission() or {}
        who = ", ".join(f"{r.get('spec')}.{r.get('variant')}" for r in meta.get("requested_by", []))
        if plan is not None and not who:
            who = ", ".join(f"{s}.{v}" for s, v in plan.by_id[rd.run_id].requested_by)
        state = run_status(rd, sacct) if rd.exists() else "pending"
        reason = str(rd.read_state().get("reason", "")) if state in ("failed", "cancelled") else ""
        result = (rd.result() or {}) if state == "done" else {}
        rows.append({"run_id": rd.run_id, "state": state, "job": f"{sub.get('cluster', '')}:{sub.get('job_id', '')}" if sub else "",
                     "scale": str(meta.get("scale", plan.scale if plan is not None else "")), "requested_by": who,
                     "reason": reason.splitlines()[0][:120] if reason else "",
                     "elapsed": _duration(result.get("elapsed_s")), "headline": _headline(result)})
    return rows


#: The metric a finished run is summed up by in ``bikebench status`` (the first its result has).
HEADLINE_METRICS = ("top1", "mAP", "zs_half_top1", "zs_k600_top1")


def _headline(result: dict) -> str:
    """``top1 62.76`` (percent) for a finished run's result, else ``""``."""
    metrics = result.get("metrics") or {}
    for name in HEADLINE_METRICS:
        value = metrics.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"{name} {value:.2f}"
    return ""


def _duration(seconds: Any) -> str:
    """``14s``, ``3m05s``, ``2h03m``; ``""`` when unknown."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def cmd_status(args: argparse.Namespace) -> int:
    results = Path(args.results).resolve()
    plan = None
    if args.spec:
        from harness.expand import expand
        from harness.spec import load_spec

        spec = load_spec(args.spec, args.overrides)
        world = _world(args, results, build=False) if args.scale == "smoke" else None
        plan = expand(spec, args.scale, results, world=world)
    rows = status_rows(results, plan)
    if not rows:
        print(f"no runs under {results / 'runs'}")
        return 0
    width = max(len(r["state"]) for r in rows)
    head = max(len(r["headline"]) for r in rows)
    for r in rows:
        line = (f"{r['run_id']}  {r['state']:<{width}}  {r['scale']:5s}  {r['job']:<16s}  {r['elapsed']:>6s}  "
                f"{r['headline']:<{head}}  {r['requested_by']}")
        print(line + (f"  ({r['reason']})" if r["reason"] else ""))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from harness.tracking import resolve_tracking_uri, sync

    results = Path(args.results).resolve()
    report = sync(results, args.tracking_uri)
    print(f"MLflow ({resolve_tracking_uri(args.tracking_uri, results)}): {report}")
    return 0


def cmd_world(args: argparse.Namespace) -> int:
    from bike.world import build_world

    from harness.expand import default_world_root

    from bike.world.build import WorldError

    root = Path(args.root).resolve() if args.root else default_world_root(args.results)
    try:
        info = build_world(root, size=args.size, seed=args.seed, force=args.force)
    except WorldError as exc:
        raise ConfigError(str(exc)) from None
    ident = info.identity
    print(f"world at {root}: {ident['size']} seed {ident['seed']}, config {ident['config_hash']}, "
          f"checkpoint {info.checkpoint} (sha256 {ident['checkpoint_sha256'][:12]})")
    return 0


def add_check_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``bikebench check`` options; pair with :func:`run_from_args`."""
    from harness.check import DEFAULT_BASELINE, DEFAULT_RESULTS, FULL_SCALE, SPREAD_K

    parser.add_argument("--results", default=str(DEFAULT_RESULTS), help="results file (default: %(default)s)")
    parser.add_argument("--baseline", default=str(DEFAULT_BASELINE), help="baseline file (default: %(default)s)")
    parser.add_argument("--against", choices=("baseline", "paper", "both"), default="baseline")
    parser.add_argument("--tolerance", type=float, default=None, help="points, for every comparison (defaults: paper 0.5, baseline 1.0)")
    parser.add_argument("--paper-tolerance", type=float, default=None)
    parser.add_argument("--baseline-tolerance", type=float, default=None)
    parser.add_argument("--tolerances", default=None, help="YAML with 'paper:'/'baseline:' sections (default, metrics, tables, cells, direction)")
    parser.add_argument("--direction", choices=("decrease", "increase", "both"), default=None, help="which change is a regression (default: per metric)")
    parser.add_argument("--scale", default=FULL_SCALE, help="compare only cells of this scale with the paper ('any': all)")
    parser.add_argument("--allow-missing", action="store_true", help="missing cells do not fail the check")
    parser.add_argument("--bless", action="store_true", help="write the results as the new baseline")
    parser.add_argument("--spread", nargs="+", default=[], metavar="RESULTS",
                        help="with --bless: the same table at other training seeds; each cell's tolerance = "
                             f"{SPREAD_K:g} x its standard deviation over the seeds (`make bless`)")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run :func:`harness.check.check_main` from the options of :func:`add_check_arguments`."""
    from harness.check import check_main

    return check_main(
        args.results,
        args.baseline,
        args.against,
        args.tolerance,
        fail_on_missing=not args.allow_missing,
        paper_tolerance=args.paper_tolerance,
        baseline_tolerance=args.baseline_tolerance,
        tolerances_file=args.tolerances,
        direction=args.direction,
        scale=None if args.scale == "any" else args.scale,
        bless=args.bless,
        spread=args.spread,
    )


def cmd_check(args: argparse.Namespace) -> int:
    return run_from_args(args)


def cmd_tune(args: argparse.Namespace) -> int:
    from harness.tracking import resolve_tracking_uri
    from harness.tuning import tune_main

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"command line: --workers {args.workers}; expected >= 1")
    uri = None if args.no_track else resolve_tracking_uri(args.tracking_uri, Path(args.results).resolve())
    return tune_main(args.sweep, args.overrides, tracking_uri=uri, workers=args.workers, executor=args.executor,
                     resources=_resources(args), poll_s=args.poll)


def cmd_mlflow_uri(args: argparse.Namespace) -> int:
    from harness.tracking import resolve_tracking_uri

    print(resolve_tracking_uri(args.tracking_uri, Path(args.results).resolve()))
    return 0


COMMANDS = {
    "run": cmd_run, "table6": cmd_table6, "status": cmd_status, "sync": cmd_sync, "world": cmd_world,
    "check": cmd_check, "tune": cmd_tune, "mlflow-uri": cmd_mlflow_uri,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``bikebench`` console script; returns the exit code."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args, extra = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    # key=value overrides may come after options: argparse leaves them over; hand them back
    target = {"run": "items", "table6": "overrides", "status": "overrides", "tune": "overrides"}.get(args.command)
    stray = [e for e in extra if e.startswith("-") or "=" not in e or target is None]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        setattr(args, target, list(getattr(args, target) or []) + extra)
    if getattr(args, "scale", None) != "full":
        # the world build and smoke-scale jobs compute with pinned kernels, which torch reads when it
        # is imported: set them now, before anything imports torch (jobs inherit them; bike.numerics)
        from bike.numerics import pin_environment

        pin_environment()
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

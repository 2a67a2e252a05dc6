"""``bikebench``: the command line of the harness.

    bikebench run SPEC [SPEC ...] [--scale smoke|full] [--executor local|slurm|debug] [--dry-run] [key=value ...]
    bikebench table6 [--scale smoke|full] [--executor local|slurm|debug] [--dry-run] [--lambda-from STUDY] [key=value ...]
    bikebench status [SPEC] [--scale smoke|full]
    bikebench sync
    bikebench world build [--size default|test] [--root DIR] [--seed N]
    bikebench check [...]            (harness.check; options: add_check_arguments)
    bikebench directions RESULTS [RESULTS ...] [--json] [--out FILE]   (harness.directions: worlds side by side)
    bikebench compare BEFORE AFTER [--json] [--out FILE]   (harness.significance: two tables of one world, cell by cell)
    bikebench tune SWEEP [key=value ...] [--workers N] [--executor local|slurm|debug] [resources]   (harness.tuning)
    bikebench import official CKPT --out DIR | official-scores DIR --out DIR   (harness.importer)
    bikebench data check [SPEC --scale S | --format F --root DIR --list [SPLIT=]FILE --class-file F] [--decode all|sample N|none] ...
    bikebench data prepare SRC DST [--short-side 320] [--keyint 16] [--tasks N --executor local|slurm|debug]
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
#: Longest error message printed (a huge value in a spec never floods the terminal).
MAX_MESSAGE_CHARS = 8000


# ---------------------------------------------------------------------------------- option types
# argparse calls these on the option's text; a refusal names the option, the value and what is allowed.
def _number(kind: type, minimum: float, what: str):
    def parse(text: str):
        import math

        try:
            value = kind(text)
        except (TypeError, ValueError):
            value = None
        if value is None or (kind is float and not math.isfinite(value)) or value < minimum:
            raise argparse.ArgumentTypeError(f"got {text[:80]!r}; expected {what}")
        return value

    parse.__name__ = what  # argparse's fallback message names the type
    return parse


_positive_int = _number(int, 1, "an integer >= 1")
_count = _number(int, 0, "an integer >= 0")
_positive_float = _number(float, 1e-9, "a finite number > 0")


def _text(text: str) -> str:
    """A value that reaches an sbatch script or a shell line: printable, no control characters."""
    from harness.spec.models import text_problem

    why = text_problem(text)
    if why:
        raise argparse.ArgumentTypeError(f"got {text[:80]!r}; {why}")
    return text


def _slurm_time(text: str) -> str:
    from harness.spec.models import parse_slurm_time

    try:
        parse_slurm_time(_text(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _sbatch_item(text: str) -> str:
    key, sep, _ = _text(text).partition("=")
    if not sep or not key.lstrip("-"):
        raise argparse.ArgumentTypeError(f"got {text[:80]!r}; expected KEY=VALUE, e.g. --sbatch reservation=gpu")
    return text


def _directory(text: str) -> str:
    """A directory option: an existing directory, or a path that can become one (not a file)."""
    path = Path(_text(text)).expanduser()
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                what = "it" if parent == path else f"{parent}"
                raise argparse.ArgumentTypeError(f"got {text[:200]!r}; {what} is a file; expected a directory "
                                                 "(or a path where one can be made)")
            break
    return text


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default="results", type=_directory, help="results directory (default: ./results)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///<results>/mlflow.db)")


def _world_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--world-root", default=None, type=_directory, help="embedded world (default: $BIKE_WORLD or <results>/world)")
    parser.add_argument("--world-size", default=None, choices=("default", "test"),
                        help="default: the size of the world at --world-root, else 'default'")
    parser.add_argument("--world-seed", type=_count, default=None,
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
    parser.add_argument("--parallelism", type=_positive_int, default=1, help="local/debug: jobs at a time (default 1)")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow (run `bikebench sync` later)")
    parser.add_argument("--poll", type=_positive_float, default=2.0, help="seconds between job polls")
    res = parser.add_argument_group("resources (override the spec)")
    res.add_argument("--timeout-min", type=_positive_float, default=None)
    res.add_argument("--max-num-timeout", type=_count, default=None)
    res.add_argument("--signal-delay-s", type=_positive_int, default=None)
    _slurm_options(res, gpus=True)


def _slurm_options(res: argparse._ArgumentGroup, gpus: bool, array_help: Optional[str] = None) -> None:
    """The SLURM resource flags (``gpus``: also --gpus-per-node, --nodes, --tasks-per-node)."""
    res.add_argument("--partition", type=_text)
    if gpus:
        res.add_argument("--gpus-per-node", type=_count)
        res.add_argument("--nodes", type=_positive_int)
        res.add_argument("--tasks-per-node", type=_positive_int)
    res.add_argument("--cpus-per-task", type=_positive_int)
    res.add_argument("--mem", type=_text)
    res.add_argument("--time", type=_slurm_time, help="SLURM time limit: minutes or [D-]HH:MM:SS")
    res.add_argument("--account", type=_text)
    res.add_argument("--qos", type=_text)
    res.add_argument("--constraint", type=_text)
    res.add_argument("--array-parallelism", type=_positive_int, help=array_help)
    res.add_argument("--sbatch", action="append", default=[], type=_sbatch_item, metavar="KEY=VALUE",
                     help="extra sbatch option (repeatable)")


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

    p = sub.add_parser("table", help="run one table of the paper (1-6, A3, text, zoo) and compare it with the paper")
    p.add_argument("table_id", metavar="ID", help="1, 2, 3, 4, 5, 6, A3, text or zoo (6 is `bikebench table6`)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    _common(p), _world_options(p), _submit_options(p)

    p = sub.add_parser("paper", help="run every table of the paper; results/paper.md and paper.html")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--table", action="append", default=None, metavar="ID", help="only this table (repeatable)")
    _common(p), _world_options(p), _submit_options(p)

    p = sub.add_parser("rehearse", help="execute the full-scale plan for real on this CPU against synthetic data "
                                        "(a few steps per run, checkpoint and resume, real views; harness.rehearse)")
    p.add_argument("items", nargs="+", metavar="SPEC|table6|paper|table:ID|key=value",
                   help="spec files (or one of table6, paper, table:ID), then dotted key=value overrides")
    p.add_argument("--scale", choices=("full",), default="full", help="the scale rehearsed (full)")
    p.add_argument("--only", action="append", default=None, metavar="VARIANT", help="only this variant (+ its dependencies)")
    p.add_argument("--backbone", action="append", default=[], metavar="NAME",
                   help="only the runs of this backbone (+ their dependencies), e.g. ViT-B-32 (repeatable)")
    p.add_argument("--executor", choices=EXECUTOR_CHOICES, default="local", help="submitit cluster, never auto-detected")
    p.add_argument("--parallelism", type=_positive_int, default=1, help="local/debug: jobs at a time (default 1)")
    p.add_argument("--poll", type=_positive_float, default=2.0, help="seconds between job polls")
    p.add_argument("--steps", type=_positive_int, default=2, help="optimiser steps per training run (>= 2; default 2)")
    p.add_argument("--batch", type=_positive_int, default=2, help="cap on train.batch_size (default 2)")
    p.add_argument("--train-videos", type=_positive_int, default=4, help="training videos a run reads (default 4)")
    p.add_argument("--val-videos", type=_positive_int, default=2, help="videos each evaluation scores (default 2)")
    p.add_argument("--per-class", type=_positive_int, default=2, help="videos per class in the mirror's training lists")
    p.add_argument("--timeout-min", type=_positive_float, default=120.0, help="time limit of each rehearsal job")
    p.add_argument("--keep", action="store_true", help="keep the previous rehearsal's runs (default: start afresh)")
    p.add_argument("--results", default="results", type=_directory,
                   help="results directory; the rehearsal writes <results>/rehearsal (runs, data mirror, mlflow.db, report)")

    p = sub.add_parser("status", help="state of every run (from the run directories)")
    p.add_argument("spec", nargs="?", default=None)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--scale", choices=SCALE_CHOICES, default="smoke")
    _common(p), _world_options(p)

    p = sub.add_parser("sync", help="replay run directories into MLflow")
    _common(p)
    p.add_argument("--rebase", action="store_true",
                   help="first point a moved SQLite store's artifact locations at <results>/mlartifacts")

    p = sub.add_parser("world", help="the embedded miniature video world")
    wsub = p.add_subparsers(dest="world_command", required=True)
    wb = wsub.add_parser("build", help="build (or reuse) the world and its tiny CLIP")
    wb.add_argument("--size", default="default", choices=("default", "test"))
    wb.add_argument("--root", default=None, type=_directory, help="default: $BIKE_WORLD or <results>/world")
    wb.add_argument("--seed", type=_count, default=0)
    wb.add_argument("--force", action="store_true", help="rebuild, replacing whatever world is at --root")
    wb.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                    help="a WorldConfig field other than the size preset's (repeatable; a tuple as comma-separated "
                         "values), e.g. --set window=0.6,0.9 --set pretrain_tail_every=4; commands that use the "
                         "world afterwards keep its settings (docs/world.md)")
    _common(wb)

    p = sub.add_parser("check", help="regression check against the paper / the blessed baseline")
    add_check_arguments(p)

    p = sub.add_parser("directions", help="the ablation directions of several worlds' Table 6, side by side",
                       description="Each world's Table 6 against the paper's ablation directions, side by side; each "
                                   "direction is tested on the validation videos from the runs' cached scores "
                                   "(McNemar's exact test: resolved the paper's way, against it, or within the noise).")
    p.add_argument("sources", nargs="+", metavar="RESULTS",
                   help="results directories written by `bikebench table6 --world-seed N` (or their table6_results.json; "
                        "the runs under the same directory give the tests)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of markdown")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the markdown report (and FILE.json beside it)")

    p = sub.add_parser("compare", help="two tables of one world, cell by cell: which cells a change moved beyond the noise",
                       description="Every cell two results share (e.g. Table 6 before and after a change of the method, "
                                   "on one world), tested on the validation videos both versions scored from the runs' "
                                   "cached scores (McNemar's exact test, p < 0.05): better, worse, or within the noise.")
    p.add_argument("before", metavar="BEFORE", help="results directory (or results file) of the first table")
    p.add_argument("after", metavar="AFTER", help="results directory (or results file) of the second table, same world")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON instead of markdown")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the markdown (and FILE.json beside it)")

    p = sub.add_parser("tune", help="Optuna study on cached scores")
    p.add_argument("sweep")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///<results>/mlflow.db)")
    p.add_argument("--results", default="results", type=_directory, help="results directory of the default tracking URI")
    p.add_argument("--no-track", action="store_true", help="do not log the study to MLflow")
    p.add_argument("--workers", type=int, default=None,
                   help="workers sharing the study, submitted as ONE job array (default: the sweep's `workers`)")
    p.add_argument("--executor", choices=EXECUTOR_CHOICES, default=None,
                   help="where the workers run (default: the sweep's `executor`, else local); "
                        "one worker runs in this process unless slurm")
    p.add_argument("--poll", type=_positive_float, default=1.0, help="seconds between polls of the worker array")
    res = p.add_argument_group("worker resources (override the sweep's `resources`)")
    res.add_argument("--timeout-min", type=_positive_float, default=None, help="wall-clock limit of each worker task")
    _slurm_options(res, gpus=False, array_help="how many worker tasks may run at once")

    p = sub.add_parser("import", help="the authors' released artefacts as run directories (harness.importer)")
    isub = p.add_subparsers(dest="import_command", required=True)
    ip = isub.add_parser("official", help="a released checkpoint (.pt) -> a run directory (init_from / evaluate)")
    ip.add_argument("checkpoint")
    ip.add_argument("--out", required=True, help="run directory to write")
    ip.add_argument("--interaction", default="vcs", choices=("vcs", "mean"), help="the released config's (VCS for every zoo model)")
    ip.add_argument("--frames", type=int, default=8, help="frames the model was trained with (not stored in the file)")
    ip.add_argument("--force", action="store_true", help="replace an earlier import in --out")
    ip = isub.add_parser("official-scores", help="the released score files (video_sentence_fusion) -> a run's score cache")
    ip.add_argument("source", help="folder with k400_{video,sentence}_{sims,labels}.pt, or video_sentence_fusion.zip")
    ip.add_argument("--out", required=True, help="run directory to write")
    ip.add_argument("--class-file", default=None, help="CSV id,name in label order (default: the K400 classes)")
    ip.add_argument("--force", action="store_true", help="replace an earlier import in --out")

    p = sub.add_parser("data", help="check a dataset's lists and files; re-encode videos (harness.datacheck, harness.dataprepare)")
    dsub = p.add_subparsers(dest="data_command", required=True)
    dc = dsub.add_parser("check", help="parse the lists, check every video / frame directory (exit 1: bad files found)")
    dc.add_argument("spec", nargs="?", default=None, help="experiment spec whose runs' data to check")
    dc.add_argument("overrides", nargs="*", metavar="key=value")
    dc.add_argument("--scale", choices=SCALE_CHOICES, default="full")
    dc.add_argument("--format", default=None, choices=("video_list", "frame_dir", "charades", "activitynet"),
                    help="without SPEC: the list format")
    dc.add_argument("--root", default="", help="without SPEC: directory the list entries are relative to")
    dc.add_argument("--list", action="append", default=[], metavar="[SPLIT=]FILE", help="without SPEC: a list (repeatable; default split val)")
    dc.add_argument("--class-file", default="", help="without SPEC: the class file")
    dc.add_argument("--frame-template", default=None, help="without SPEC: frame-directory image names (default img_{:05d}.jpg)")
    dc.add_argument("--decode", nargs="+", default=["none"], metavar="LEVEL",
                    help="all | sample N | none (default: none, headers and frame counts only)")
    dc.add_argument("--tasks", type=_positive_int, default=None, help="parallel tasks of the job array (default: CPUs here, local)")
    dc.add_argument("--executor", choices=EXECUTOR_CHOICES, default="local")
    dc.add_argument("--cache", default=None, help="results cache (default: <results>/cache/datacheck.json)")
    dc.add_argument("--recheck", action="store_true", help="ignore the cache: check every file again")
    dc.add_argument("--json", action="store_true", help="the report as one JSON object on stdout")
    dc.add_argument("--write-exclude", default=None, metavar="FILE", help="write the bad entries as an exclusion list (data.exclude_list)")
    dc.add_argument("--poll", type=_positive_float, default=0.5, help="seconds between polls of the tasks")
    res = dc.add_argument_group("task resources")
    res.add_argument("--timeout-min", type=_positive_float, default=None)
    _slurm_options(res, gpus=False, array_help="how many tasks may run at once")
    _common(dc), _world_options(dc)
    dp = dsub.add_parser("prepare", help="re-encode a folder of videos (short side, keyframe interval); resumable")
    dp.add_argument("src", help="folder of source videos (never modified)")
    dp.add_argument("dst", help="output folder (same relative paths, .mp4)")
    dp.add_argument("--short-side", type=_positive_int, default=320, help="short side in pixels (default 320: se320)")
    dp.add_argument("--keyint", type=_positive_int, default=16, help="a keyframe every N frames (default 16)")
    dp.add_argument("--crf", type=_count, default=23)
    dp.add_argument("--preset", default="veryfast", type=_text)
    dp.add_argument("--tasks", type=_positive_int, default=None, help="parallel tasks of the job array (default: CPUs here, local)")
    dp.add_argument("--executor", choices=EXECUTOR_CHOICES, default="local")
    dp.add_argument("--poll", type=_positive_float, default=0.5)
    res = dp.add_argument_group("task resources")
    res.add_argument("--timeout-min", type=_positive_float, default=None)
    _slurm_options(res, gpus=False, array_help="how many tasks may run at once")

    p = sub.add_parser("mlflow-uri", help="print the tracking URI in use")
    _common(p)

    p = sub.add_parser("ui", help="serve the MLflow UI of the results and print the link that opens each experiment's runs")
    _common(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--print-only", action="store_true", help="print the links, do not start the server")
    return parser


def _resources(args: argparse.Namespace):
    """Command-line resource overrides as a ResourceSpec (None when nothing was given)."""
    from harness.spec import ResourceSpec

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
    from pydantic import ValidationError

    from bike.config import format_validation_error

    try:
        return ResourceSpec.model_validate({**top, **({"slurm": slurm} if slurm else {})})
    except ValidationError as exc:
        raise ConfigError(format_validation_error("command line (resource options)", exc)) from None


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


def cmd_table(args: argparse.Namespace) -> int:
    from harness.paper_tables import paper_table, run_table

    table = paper_table(args.table_id)  # an unknown id is refused before the world is built
    results = Path(args.results).resolve()
    drive = run_table(table.id, overrides=args.overrides, **_drive_kwargs(args, results))
    return 0 if drive.ok else 1


def cmd_paper(args: argparse.Namespace) -> int:
    from harness.paper_tables import paper_table, run_paper

    tables = [paper_table(t).id for t in args.table] if args.table else None
    results = Path(args.results).resolve()
    drive = run_paper(tables=tables, overrides=args.overrides, **_drive_kwargs(args, results))
    return 0 if drive.ok else 1


def cmd_rehearse(args: argparse.Namespace) -> int:
    from harness.rehearse import RehearsalOptions, rehearse

    options = RehearsalOptions(steps=args.steps, batch=args.batch, train_videos=args.train_videos,
                               val_videos=args.val_videos, per_class=args.per_class, timeout_min=args.timeout_min,
                               cluster=args.executor, backbones=tuple(args.backbone))
    ok, report = rehearse(args.items, results=args.results, cluster=args.executor, options=options, only=args.only,
                          parallelism=args.parallelism, poll_s=args.poll, keep=args.keep,
                          log=lambda line: print(line, flush=True))
    print(report.read_text())
    print(f"rehearsal {'passed' if ok else 'FAILED'}: {report}")
    return 0 if ok else 1


def status_rows(results: Path, plan: Optional[Any] = None) -> list[dict[str, str]]:
    """One row per run: run id, status, job id, what asked for it."""
    from harness.executor import format_duration, run_status, sacct_states
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
                     "elapsed": format_duration(result.get("elapsed_s")), "headline": _headline(result)})
    return rows


def _headline(result: dict) -> str:
    """``top1 62.76`` (percent) for a finished run's result, else ``""``."""
    from harness.executor import HEADLINE_METRICS  # one home: the status table and the [k/N] lines

    metrics = result.get("metrics") or {}
    for name in HEADLINE_METRICS:
        value = metrics.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"{name} {value:.2f}"
    return ""


def _table_order(results: Path):
    """Sort key of ``bikebench status`` rows: by spec, then by the order of the variants in the spec file
    (the table's row order), then by run id; runs no spec file names come last."""
    import yaml

    from harness.rundir import RunDir

    orders: dict[str, dict[str, int]] = {}

    def variant_order(path: str) -> dict[str, int]:
        if path not in orders:
            try:
                doc = yaml.safe_load(Path(path).read_text()) or {}
                orders[path] = {str(v): i for i, v in enumerate((doc.get("variants") or {}).keys())}
            except (OSError, yaml.YAMLError, AttributeError):
                orders[path] = {}
        return orders[path]

    def key(row: dict[str, str]):
        meta = RunDir.for_run(results, row["run_id"]).read_meta() or {}
        req = (meta.get("requested_by") or [{}])[0]
        spec, variant = str(req.get("spec", "")), str(req.get("variant", ""))
        if not spec and row["requested_by"]:
            spec, _, variant = row["requested_by"].split(",")[0].partition(".")
        index = variant_order(str(meta.get("spec_path", ""))).get(variant, 10**6)
        return (not spec, spec, index, row["run_id"])

    return key


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
    rows.sort(key=_table_order(results))
    width = max(len(r["state"]) for r in rows + [{"state": "state"}])
    head = max(len(r["headline"]) for r in rows + [{"headline": "headline"}])
    print(f"{'run':12s}  {'state':<{width}}  {'scale':5s}  {'job':<16s}  {'time':>6s}  {'headline':<{head}}  spec.variant")
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
    from harness.tracking import TrackingError, resolve_tracking_uri, sync

    results = Path(args.results).resolve()
    try:
        if getattr(args, "rebase", False):
            from harness.tracking import rebase_store

            for line in rebase_store(results, args.tracking_uri) or ["nothing to rebase"]:
                print(f"rebased {line}")
        report = sync(results, args.tracking_uri)
    except TrackingError as exc:  # the store cannot be used at all: one line, nothing is lost
        print(f"error: {exc}; the run directories are kept, run `bikebench sync` again later", file=sys.stderr)
        return 1
    print(f"MLflow ({resolve_tracking_uri(args.tracking_uri, results)}): {report}")
    for line in report.failed:
        print(f"error: MLflow did not take run {line}", file=sys.stderr)
    for line in report.warnings:
        print(f"warning: {line}", file=sys.stderr)
    return 1 if report.failed else 0


def cmd_world(args: argparse.Namespace) -> int:
    from bike.world import build_world

    from harness.expand import default_world_root

    from bike.world.build import WorldError

    from bike.world.config import parse_settings

    root = Path(args.root).resolve() if args.root else default_world_root(args.results)
    try:
        settings = parse_settings(args.settings, args.size)
    except ValueError as exc:
        raise ConfigError(f"command line: {exc}") from None
    try:
        info = build_world(root, size=args.size, seed=args.seed, force=args.force, **settings)
    except WorldError as exc:
        raise ConfigError(str(exc)) from None
    ident = info.identity
    print(f"world at {root}: {ident['size']} seed {ident['seed']}, config {ident['config_hash']}, "
          f"checkpoint {info.checkpoint} (sha256 {ident['checkpoint_sha256'][:12]})")
    if info.backbone_checkpoint is not None:
        print(f"  the runs' backbone: {info.backbone_checkpoint} (step {info.config['backbone_step']} of the pretraining; "
              f"sha256 {ident['backbone_checkpoint_sha256'][:12]}); the checkpoint above is the attribute generator")
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


def _report(args: argparse.Namespace, build: Any) -> int:
    """Print a report (``build()``: an object with ``to_markdown`` and ``to_dict``) as markdown, or JSON with
    ``--json``; ``--out FILE`` also writes FILE and FILE.json. Unreadable or contradictory results exit 2."""
    import json

    from harness.cells import CheckError
    from harness.significance import SignificanceError

    try:
        report = build()
    except (CheckError, SignificanceError) as exc:
        raise ConfigError(str(exc)) from None
    markdown, data = report.to_markdown(), json.dumps(report.to_dict(), indent=2) + "\n"
    print(data if args.json else markdown, end="")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(markdown)
        out.with_suffix(".json").write_text(data)
    return 0


def cmd_directions(args: argparse.Namespace) -> int:
    from harness.directions import directions_across

    return _report(args, lambda: directions_across(args.sources))


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.significance import compare_tables

    return _report(args, lambda: compare_tables(args.before, args.after))


def cmd_tune(args: argparse.Namespace) -> int:
    from harness.tracking import resolve_tracking_uri
    from harness.tuning import tune_main

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"command line: --workers {args.workers}; expected >= 1")
    uri = None if args.no_track else resolve_tracking_uri(args.tracking_uri, Path(args.results).resolve())
    return tune_main(args.sweep, args.overrides, tracking_uri=uri, workers=args.workers, executor=args.executor,
                     resources=_resources(args), poll_s=args.poll)


def cmd_import(args: argparse.Namespace) -> int:
    """``bikebench import official CKPT --out DIR`` / ``bikebench import official-scores DIR --out DIR``."""
    from harness.importer import import_official, import_official_scores

    if args.import_command == "official":
        out = import_official(args.checkpoint, args.out, interaction=args.interaction, frames=args.frames, overwrite=args.force)
        print(f"imported {args.checkpoint} -> {out} (use it as init_from, or evaluate it)")
        return 0
    out = import_official_scores(args.source, args.out, class_file=args.class_file, overwrite=args.force)
    from bike.rundir import RESULT_FILE, read_json

    m = (read_json(out / RESULT_FILE) or {}).get("metrics", {})
    print(f"imported {args.source} -> {out}/cache/val: video {m.get('video_top1', float('nan')):.2f}, "
          f"attributes {m.get('attr_top1', float('nan')):.2f}, fused at λ 0.7 {m.get('fused_top1', float('nan')):.2f} top-1 "
          f"(README: 81.4; released log: 81.47)")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    """``bikebench data check`` (exit 0 clean, 1 bad files) / ``bikebench data prepare`` (exit 1: some failed)."""
    tasks = args.tasks or (1 if args.executor == "debug" else max(1, os.cpu_count() or 1))
    if args.data_command == "prepare":
        from harness.dataprepare import PrepareSettings, prepare

        settings = PrepareSettings(short_side=args.short_side, keyint=args.keyint, crf=args.crf, preset=args.preset)
        report = prepare(args.src, args.dst, settings, executor=args.executor, tasks=tasks, resources=_resources(args),
                         poll_s=args.poll, log=lambda line: print(line, file=sys.stderr, flush=True))
        print(f"{report.videos} video(s): {report.encoded} re-encoded, {report.skipped} already done, "
              f"{len(report.failed)} failed ({report.seconds:.1f} s) -> {args.dst}")
        for rel, why in sorted(report.failed.items()):
            print(f"  failed {rel}: {why}")
        return 0 if report.ok else 1
    import json

    from harness import datacheck as dc

    level = dc.parse_decode(args.decode)
    results = Path(args.results).resolve()
    if args.spec:
        if args.format or args.list or args.class_file:
            raise ConfigError("command line: give a SPEC or --format/--root/--list/--class-file, not both")
        world = _world(args, results, build=False, quiet=True) if args.scale == "smoke" else None
        needs = dc.needs_of_spec(args.spec, args.scale, args.overrides, results, world=world)
    else:
        if args.overrides:
            raise ConfigError(f"command line: key=value overrides {args.overrides} need a SPEC")
        if not (args.format and args.list and args.class_file):
            raise ConfigError("command line: no SPEC; expected --format, --list and --class-file (and --root)")
        needs = dc.needs_of_args(args.format, args.root, args.list, args.class_file, frame_template=args.frame_template)
    cache = Path(args.cache).resolve() if args.cache else results / "cache" / "datacheck.json"
    try:
        report = dc.check(needs, level, cache_file=cache, executor=args.executor, tasks=tasks, resources=_resources(args),
                          poll_s=args.poll, log=lambda line: print(line, file=sys.stderr, flush=True))
    except RuntimeError as exc:  # a task of the array failed: what finished is cached
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.write_exclude:
        n = dc.write_exclude_list(report, Path(args.write_exclude))
        print(f"wrote {n} entr{'y' if n == 1 else 'ies'} to {args.write_exclude} (name it as data.exclude_list)", file=sys.stderr)
    print(json.dumps(report.to_json(), indent=1) if args.json else report.table())
    return 0 if report.ok else 1


def cmd_mlflow_uri(args: argparse.Namespace) -> int:
    from harness.tracking import resolve_tracking_uri

    print(resolve_tracking_uri(args.tracking_uri, Path(args.results).resolve()))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """``bikebench ui``: the links that open each experiment's runs view (MLflow 3 opens experiments on
    its GenAI overview otherwise), then ``mlflow ui`` on the results' store (docs/mlflow.md)."""
    import shutil
    import subprocess

    from harness.tracking import TrackingError, ui_links

    results = Path(args.results).resolve()
    base = f"http://{args.host}:{args.port}"
    try:
        uri, links, warnings = ui_links(results, args.tracking_uri, base)
    except TrackingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    print(f"MLflow UI of {uri}; open the runs (in the table's order) at:")
    for name, link in links:
        print(f"  {name}: {link}")
    if args.print_only or uri.startswith(("http://", "https://")):
        return 0
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow") or "mlflow"
    return subprocess.call([mlflow, "ui", "--host", args.host, "--port", str(args.port), "--backend-store-uri", uri])


COMMANDS = {
    "ui": cmd_ui,
    "run": cmd_run, "rehearse": cmd_rehearse, "table6": cmd_table6, "table": cmd_table, "paper": cmd_paper, "status": cmd_status, "sync": cmd_sync, "world": cmd_world,
    "check": cmd_check, "directions": cmd_directions, "compare": cmd_compare, "tune": cmd_tune, "mlflow-uri": cmd_mlflow_uri, "import": cmd_import, "data": cmd_data,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``bikebench`` console script; returns the exit code."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args, extra = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    # key=value overrides may come after options: argparse leaves them over; hand them back
    target = {"run": "items", "rehearse": "items", "table6": "overrides", "table": "overrides", "paper": "overrides", "status": "overrides", "tune": "overrides",
              "data": "overrides" if getattr(args, "data_command", None) == "check" else None}.get(args.command)
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
        from bike.config import short_text

        print(f"error: {short_text(str(exc), MAX_MESSAGE_CHARS)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

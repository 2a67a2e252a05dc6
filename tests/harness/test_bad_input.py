"""Every bad input is refused before anything is submitted: exit code 2, a message naming the file, the
field, the value and what is allowed, bounded in size, and never a traceback (issue #19, point 4).

One parametrised test; each case builds its input under ``tmp_path`` (a spec, a sweep, list files,
command-line options) and calls ``harness.cli.main``. The cases are grouped by category (the id
prefix): ``spec`` (field values), ``yaml`` (file and YAML structure), ``names`` (names, control
characters, lengths), ``cli`` (command-line options), ``files`` (pre-flight: files, lists, backbones,
sizes, stage settings) and ``sweep`` (Optuna sweep specs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from harness.cli import main

CELL = {"table": "6a", "row": "vcs", "column": "top1", "metric": "video_top1"}
MAX_MESSAGE = 10_000


def _data(tmp: Path) -> Path:
    d = tmp / "data"
    d.mkdir(exist_ok=True)
    (d / "classes.csv").write_text("id,name\n0,jumping\n1,running\n2,swimming\n")
    (d / "train.txt").write_text("".join(f"t{i}.mp4 {i % 3}\n" for i in range(12)))
    (d / "val.txt").write_text("".join(f"v{i}.mp4 {i % 3}\n" for i in range(6)))
    return d


def base_spec(tmp: Path) -> dict[str, Any]:
    """A spec every check accepts (full scale, bike-tiny, random weights, three classes)."""
    d = _data(tmp)
    return {
        "name": "bad", "family": "general",
        "dataset": {"name": "k400", "root": str(d), "train_list": str(d / "train.txt"), "val_list": str(d / "val.txt"),
                    "class_file": str(d / "classes.csv")},
        "model": {"backbone": "bike-tiny", "pretrained": None, "frames": 2, "resolution": 64},
        "attributes": {"text_encoder": "bike-tiny", "text_encoder_pretrained": None},
        "train": {"batch_size": 4, "epochs": 1},
        "resources": {"full": {"timeout_min": 5}},
        "variants": {"v": {"cells": [dict(CELL)]}},
    }


def _set(body: dict, dotted: str, value: Any) -> dict:
    node = body
    *head, last = dotted.split("/")
    for key in head:
        node = node.setdefault(key, {})
    node[last] = value
    return body


def _write(tmp: Path, body: Any, name: str = "spec.yaml") -> Path:
    path = tmp / name
    path.write_text(body if isinstance(body, str) else yaml.safe_dump(body, sort_keys=False, allow_unicode=True))
    return path


def _run_args(path: Path, tmp: Path, *extra: str, dry: bool = True) -> list[str]:
    argv = ["run", str(path), "--scale", "full", "--results", str(tmp / "results"), "--no-track"]
    return argv + (["--dry-run"] if dry else ["--executor", "local", "--poll", "0.05"]) + list(extra)


# A case: builder(tmp, monkeypatch) -> (argv, fragments the error output must contain).
Builder = Callable[[Path, Any], tuple[list[str], list[str]]]
CASES: list[tuple[str, Builder]] = []


def case(cid: str, builder: Builder) -> None:
    CASES.append((cid, builder))


# ---------------------------------------------------------------------------------- spec fields
def spec_field(cid: str, dotted: str, value: Any, *frags: str) -> None:
    def build(tmp: Path, mp: Any):
        path = _write(tmp, _set(base_spec(tmp), dotted, value))
        return _run_args(path, tmp), ["spec.yaml", *frags]

    case(f"spec-{cid}", build)


def spec_set(cid: str, overrides: dict, *frags: str) -> None:
    """A bad value in a variant's dotted ``set``."""
    def build(tmp: Path, mp: Any):
        path = _write(tmp, _set(base_spec(tmp), "variants/v/set", overrides))
        return _run_args(path, tmp), ["spec.yaml", *frags]

    case(f"spec-set-{cid}", build)


spec_field("frames-zero", "model/frames", 0, "model.frames: got 0", "greater than or equal to 1")
spec_field("frames-word", "model/frames", "eight", "model.frames: got 'eight'", "integer")
spec_field("resolution", "model/resolution", 8, "model.resolution: got 8", "16")
spec_field("interaction", "model/interaction", "meen", "model.interaction: got 'meen'", "'vcs'")
spec_field("temporal", "model/temporal", "lstm", "model.temporal: got 'lstm'", "'transformer'")
spec_field("vcs-tau-zero", "model/vcs_tau", 0, "model.vcs_tau: got 0", "greater than 0")
spec_field("vcs-tau-nan", "model/vcs_tau", float("nan"), "model.vcs_tau: got nan", "greater than 0")
spec_field("epochs-inf", "train/epochs", float("inf"), "train.epochs: got inf", "finite")
spec_field("epochs-negative", "train/epochs", -1, "train.epochs: got -1", "greater than 0")
spec_field("batch-true", "train/batch_size", True, "train.batch_size: got True", "not a boolean")
spec_field("batch-zero", "train/batch_size", 0, "train.batch_size: got 0", "greater than or equal to 1")
spec_field("batch-fraction", "train/batch_size", 2.5, "train.batch_size: got 2.5", "integer")
spec_field("accum-zero", "train/grad_accum", 0, "train.grad_accum: got 0", "greater than or equal to 1")
spec_field("precision", "train/precision", "fp8", "train.precision: got 'fp8'", "'bf16'")
spec_field("warmup-negative", "train/warmup_epochs", -1, "train.warmup_epochs: got -1", "greater than or equal to 0")
spec_field("lr-nan", "train/lr_new", float("nan"), "train.lr_new: got nan", "finite")
spec_field("betas-inf", "train/betas", [0.9, float("inf")], "train.betas: got [0.9, inf]", "finite")
spec_field("select-on", "train/select_on", "test", "train.select_on: got 'test'", "'val'")
spec_field("max-steps-zero", "train/max_steps", 0, "train.max_steps: got 0", "greater than or equal to 1")
spec_field("few-shot-zero", "train/few_shot", 0, "train.few_shot: got 0", "greater than or equal to 1")
spec_field("few-shot-seed", "train/few_shot_seed", 2**70, "train.few_shot_seed: got 1180591620717411303424", "less than or equal to")
spec_field("crops", "eval/crops", 2, "eval.crops: got 2", "expected one of 1 or 3")
spec_field("crops-true", "eval/crops", True, "eval.crops: got True", "not a boolean")
spec_field("clips-zero", "eval/clips", 0, "eval.clips: got 0", "greater than or equal to 1")
spec_field("eval-split", "eval/split", "train", "eval.split: got 'train'", "'val'")
spec_field("protocol", "eval/protocol", "open", "eval.protocol: got 'open'", "'closed'")
spec_field("num-attributes-zero", "attributes/num_attributes", 0, "attributes.num_attributes: got 0", "greater than or equal to 1")
spec_field("lexicon-int", "attributes/lexicon", 5, "attributes.lexicon: got 5", "string")
spec_field("lam", "fusion/lam", 1.5, "fusion.lam: got 1.5", "less than or equal to 1")
spec_field("transform", "fusion/transform", "max", "fusion.transform: got 'max'", "'softmax'")
spec_field("tau-zero", "loss/tau", 0, "loss.tau: got 0", "greater than 0")
spec_field("format", "dataset/format", "csv", "dataset.format: got 'csv'", "'video_list'")
spec_field("workers-negative", "dataset/num_workers", -1, "dataset.num_workers: got -1", "greater than or equal to 0")
spec_field("holdout-one", "dataset/tuning_holdout", 1.0, "dataset.tuning_holdout: got 1.0", "less than 1")
spec_field("decoder", "dataset/decoder", "opencv", "dataset.decoder: got 'opencv'", "'decord'")
spec_field("world", "dataset/world", "mars", "dataset.world: got 'mars'", "'general'")
spec_field("seed-huge", "seed", 2**70, "seed: got 1180591620717411303424", "less than or equal to 9223372036854775807")
spec_field("seed-negative", "seed", -1, "seed: got -1", "greater than or equal to 0")
spec_field("seed-word", "seed", "x", "seed: got 'x'", "integer")
spec_field("profile", "profile", "fast", "profile: got 'fast'", "'official'")
spec_field("stage", "stage", "train", "stage: got 'train'", "'video'")
spec_field("family", "family", "open", "family: got 'open'", "'general'")
spec_field("unknown-model-field", "model/colour", 1, "model.colour: got 1", "unknown field", "backbone")
spec_field("unknown-top-field", "varients", {}, "varients", "unknown field", "variants")
spec_field("metric-typo", "variants/v/cells", [{**CELL, "metric": "vidoe_top1"}], "metric: got 'vidoe_top1'",
           "not a metric a run reports")
spec_field("metric-empty", "variants/v/cells", [{**CELL, "metric": ""}], "metric: got ''", "at least 1 character")
spec_field("cell-unpublished", "variants/v/cells", [{**CELL, "row": "ours"}], "'6a/ours/top1'", "nearest")
spec_field("cell-missing-column", "variants/v/cells", [{"table": "6a", "row": "vcs", "metric": "top1"}],
           "column: missing", "required")
spec_field("timeout-zero", "resources/full/timeout_min", 0, "resources.full.timeout_min: got 0", "greater than 0")
spec_field("timeout-inf", "resources/full/timeout_min", float("inf"), "resources.full.timeout_min: got inf", "finite")
spec_field("requeues-negative", "resources/full/max_num_timeout", -1, "max_num_timeout: got -1", "greater than or equal to 0")
spec_field("signal-zero", "resources/full/signal_delay_s", 0, "signal_delay_s: got 0", "greater than or equal to 1")
spec_field("cpus-zero", "resources/full/slurm/cpus_per_task", 0, "cpus_per_task: got 0", "greater than or equal to 1")
spec_field("gpus-true", "resources/full/slurm/gpus_per_node", True, "gpus_per_node: got True", "not a boolean")
spec_field("mem", "resources/full/slurm/mem", "lots", "slurm.mem: got 'lots'", "64G")
spec_field("time-malformed", "resources/full/slurm/time", "1:2:3:4", "slurm.time: got '1:2:3:4'", "HH:MM:SS")
spec_field("time-zero", "resources/full/slurm/time", 0, "slurm.time: got 0", "minutes >= 1")
spec_field("resources-scale", "resources/medium", {}, "resources.medium", "'smoke'")
spec_field("scales-scale", "scales/medium", {}, "scales.medium", "'smoke'")
spec_field("run-at", "variants/v/run_at", ["medium"], "run_at.0: got 'medium'", "'smoke'")
spec_field("no-variants", "variants", {}, "variants: got {}", "at least 1 item")
spec_field("init-from-unknown", "variants/v/init_from", {"variant": "nope"}, "variants.v.init_from.variant: got 'nope'", "v")
spec_set("frames-zero", {"model.frames": 0}, "variants.v.set.model.frames: got 0", "greater than or equal to 1")
spec_set("unknown-field", {"train.epochz": 3}, "variants.v.set.train.epochz", "unknown field", "epochs")
spec_set("bad-section", {"trian.epochs": 3}, "variants.v.set.trian.epochs", "section one of")
spec_set("num-attributes-cache", {"attributes.num_attributes": 12}, "variant 'v'", "num_attributes=12", "max_attributes=10")
spec_set("section-scalar", {"model": 3}, "variants.v.set.model: got 3", "expected a mapping of model fields")


def _missing_name(tmp: Path, mp: Any):
    body = base_spec(tmp)
    del body["name"]
    return _run_args(_write(tmp, body), tmp), ["spec.yaml", "name: missing", "required"]


case("spec-missing-name", _missing_name)


# ---------------------------------------------------------------------------------- YAML structure
def yaml_text(cid: str, text: Any, *frags: str, name: str = "spec.yaml") -> None:
    def build(tmp: Path, mp: Any):
        path = tmp / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text(tmp) if callable(text) else text)
        return _run_args(path, tmp), [name, *frags]

    case(f"yaml-{cid}", build)


def _with_base(extra: str) -> Callable[[Path], str]:
    def text(tmp: Path) -> str:
        return yaml.safe_dump(base_spec(tmp), sort_keys=False) + extra

    return text


BOMB = "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
yaml_text("non-utf8", b"name: \xff\xfe bad\nfamily: general\n", "not a UTF-8 text file", "expected a YAML spec file")
yaml_text("latin1", "name: caf\u00e9\n".encode("latin-1"), "not a UTF-8 text file")
yaml_text("empty", "", "<root>: got NoneType", "expected a mapping of spec fields")
yaml_text("list-root", "- a\n- b\n", "<root>: got list", "expected a mapping")
yaml_text("scalar-root", "hello\n", "<root>: got str", "expected a mapping")
yaml_text("duplicate-top-key", _with_base("name: other\n"), "found duplicate key 'name'", "each key may appear once")
yaml_text("duplicate-variant", lambda t: yaml.safe_dump(base_spec(t), sort_keys=False).replace(
    "variants:\n", "variants:\n  v:\n    description: first\n", 1), "found duplicate key 'v'", "line")
yaml_text("duplicate-cell-key", lambda t: yaml.safe_dump(base_spec(t), sort_keys=False).replace(
    "metric: video_top1", "metric: video_top1\n      metric: attr_top1"), "found duplicate key 'metric'")
yaml_text("duplicate-dataset-key", lambda t: yaml.safe_dump(base_spec(t), sort_keys=False).replace(
    "  name: k400\n", "  name: k400\n  name: ucf101\n"), "found duplicate key 'name'")
yaml_text("alias-bomb", "a: &a [x, x, x, x, x, x, x, x, x]\n" + BOMB, "expands to more than", "alias")
yaml_text("unclosed-bracket", "name: [x\nfamily: general\n", "not valid YAML")
yaml_text("tab-indent", "name: x\nfamily: general\nvariants:\n\tv: {}\n", "not valid YAML")
yaml_text("nul-byte", "name: x\x00\n", "not valid YAML")
yaml_text("deep-nesting", "x: " + "[" * 300 + "]" * 300 + "\n", "nesting deeper than 200")
yaml_text("unknown-tag", "name: !!python/object:os.system x\n", "not valid YAML")
yaml_text("nested-env-default", _with_base("description: ${BIKE_UNSET_A_XYZ:-${BIKE_UNSET_B_XYZ}}\n"),
          "description", "no nesting")
yaml_text("unset-env", lambda t: yaml.safe_dump(base_spec(t), sort_keys=False).replace(
    "name: bad", "name: ${BIKE_SURELY_UNSET_XYZ}"), "environment variable BIKE_SURELY_UNSET_XYZ is not set")


def _directory_spec(tmp: Path, mp: Any):
    (tmp / "spec.yaml").mkdir()
    return _run_args(tmp / "spec.yaml", tmp), ["spec.yaml", "is a directory"]


def _missing_spec(tmp: Path, mp: Any):
    return _run_args(tmp / "nope.yaml", tmp), ["nope.yaml", "spec file not found"]


case("yaml-directory", _directory_spec)
case("yaml-missing-file", _missing_spec)


# ---------------------------------------------------------------------------------- names and control characters
CONTROL = "control character"
spec_field("name-dotdot", "name", "..", "name: got '..'", "no path components")
spec_field("name-path", "name", "a/b", "name: got 'a/b'", "letters, digits")
spec_field("name-long", "name", "x" * 65, "name: got 'xxxx", "1-64 characters")
spec_field("name-empty", "name", "", "name: got ''", "1-64 characters")
spec_field("name-space", "name", "my spec", "name: got 'my spec'", "letters, digits")
spec_field("name-newline", "name", "a\nb", "name: got 'a\\nb'", CONTROL)
spec_field("variant-dotdot", "variants", {"../v": {}}, "variant '../v'", "no path components")
spec_field("variant-newline", "variants", {"v\nw": {}}, "key 'v\\nw'", CONTROL)
spec_field("variant-long", "variants", {"v" * 100: {}}, "variant 'vvvv", "1-64 characters")
spec_field("partition-newline", "resources/full/slurm/partition", "gpu\n#SBATCH --time=1",
           "partition: got 'gpu\\n#SBATCH --time=1'", CONTROL)
spec_field("account-tab", "resources/full/slurm/account", "a\tb", "account: got 'a\\tb'", CONTROL)
spec_field("qos-space", "resources/full/slurm/qos", "high prio", "slurm.qos: got 'high prio'", "without whitespace")
spec_field("sbatch-newline", "resources/full/slurm/additional", {"reservation": "r\n#SBATCH --signal=x"},
           "reservation", CONTROL)
spec_field("sbatch-key", "resources/full/slurm/additional", {"bad key!": "x"}, "option 'bad key!'", "sbatch option name")
spec_field("setup-newline", "resources/full/slurm/setup", ["module load x\nrm -rf /"], "setup", CONTROL)
spec_field("root-nul", "dataset/root", "/d\x00x", "dataset.root", CONTROL)
spec_field("prompt-escape", "model/prompt", "a {} \x1b[31m", "model.prompt", CONTROL)
spec_field("cell-row-newline", "variants/v/cells", [{**CELL, "row": "vcs\nx"}], "row: got 'vcs\\nx'", CONTROL)
spec_field("description-bell", "description", "ok\x07", "description", CONTROL)
spec_field("root-long", "dataset/root", "/d" * 2500, "dataset.root", "expected at most 4096")
spec_field("line-separator", "dataset/class_file", "c\u2028.csv", "dataset.class_file", CONTROL)
spec_set("key-newline", {"model.frames\n": 2}, "key 'model.frames\\n'", CONTROL)


def _env_newline(tmp: Path, mp: Any):
    mp.setenv("BIKE_TEST_PARTITION", "gpu\n#SBATCH --time=1")
    body = _set(base_spec(tmp), "resources/full/slurm/partition", "${BIKE_TEST_PARTITION}")
    return _run_args(_write(tmp, body), tmp), ["spec.yaml", "resources.full.slurm.partition", "'gpu\\n#SBATCH", CONTROL]


def _env_newline_root(tmp: Path, mp: Any):
    mp.setenv("BIKE_TEST_ROOT", "/data\nx")
    body = _set(base_spec(tmp), "dataset/root", "${BIKE_TEST_ROOT}/k400")
    return _run_args(_write(tmp, body), tmp), ["spec.yaml", "dataset.root", CONTROL]


def _override_control(tmp: Path, mp: Any):
    return _run_args(_write(tmp, base_spec(tmp)), tmp, "model.prompt=a\x07{}"), ["command line", "model.prompt", CONTROL]


case("names-env-newline-partition", _env_newline)
case("names-env-newline-root", _env_newline_root)
case("names-override-control", _override_control)


# ---------------------------------------------------------------------------------- command-line options
def cli(cid: str, extra: list[str], *frags: str, dry: bool = True) -> None:
    """``bikebench run SPEC`` (the base spec) with these options."""
    def build(tmp: Path, mp: Any):
        (tmp / "afile").write_text("x")
        args = [a.replace("{tmp}", str(tmp)) for a in extra]
        return _run_args(_write(tmp, base_spec(tmp)), tmp, *args, dry=dry), list(frags)

    case(f"cli-{cid}", build)


def bare(cid: str, argv: list[str], *frags: str) -> None:
    """A whole command line (tune, world, sync, status, table6, run without a spec)."""
    def build(tmp: Path, mp: Any):
        (tmp / "afile").write_text("x")
        return [a.replace("{tmp}", str(tmp)) for a in argv], list(frags)

    case(f"cli-{cid}", build)


cli("parallelism-zero", ["--parallelism", "0"], "--parallelism", "got '0'", "integer >= 1")
cli("parallelism-negative", ["--parallelism=-3"], "--parallelism", "got '-3'", "integer >= 1")
cli("parallelism-word", ["--parallelism", "two"], "--parallelism", "got 'two'", "integer >= 1")
cli("timeout-zero", ["--timeout-min", "0"], "--timeout-min", "got '0'", "finite number > 0")
cli("timeout-negative", ["--timeout-min=-1"], "--timeout-min", "got '-1'", "finite number > 0")
cli("timeout-nan", ["--timeout-min", "nan"], "--timeout-min", "got 'nan'", "finite number > 0")
cli("timeout-inf", ["--timeout-min", "inf"], "--timeout-min", "got 'inf'", "finite number > 0")
cli("signal-zero", ["--signal-delay-s", "0"], "--signal-delay-s", "got '0'", "integer >= 1")
cli("requeues-negative", ["--max-num-timeout=-1"], "--max-num-timeout", "got '-1'", "integer >= 0")
cli("cpus-zero", ["--cpus-per-task", "0"], "--cpus-per-task", "got '0'", "integer >= 1")
cli("gpus-negative", ["--gpus-per-node=-1"], "--gpus-per-node", "got '-1'", "integer >= 0")
cli("nodes-zero", ["--nodes", "0"], "--nodes", "got '0'", "integer >= 1")
cli("tasks-zero", ["--tasks-per-node", "0"], "--tasks-per-node", "got '0'", "integer >= 1")
cli("array-zero", ["--array-parallelism", "0"], "--array-parallelism", "got '0'", "integer >= 1")
cli("time-four-parts", ["--time", "1:2:3:4"], "--time", "'1:2:3:4'", "HH:MM:SS")
cli("time-word", ["--time", "soon"], "--time", "'soon'", "HH:MM:SS")
cli("time-zero", ["--time", "0"], "--time", "'0'", "minutes >= 1")
cli("time-negative", ["--time=-5"], "--time", "'-5'", "HH:MM:SS")
cli("mem", ["--mem", "lots"], "command line (resource options)", "slurm.mem: got 'lots'", "64G")
cli("partition-newline", ["--partition", "gpu\n#SBATCH --time=1"], "--partition", CONTROL)
cli("account-newline", ["--account", "a\nb"], "--account", CONTROL)
cli("constraint-escape", ["--constraint", "a\x1b"], "--constraint", CONTROL)
cli("sbatch-newline", ["--sbatch", "reservation=r\n#SBATCH --signal=x"], "--sbatch", CONTROL)
cli("sbatch-no-equals", ["--sbatch", "reservation"], "--sbatch", "'reservation'", "KEY=VALUE")
cli("sbatch-no-key", ["--sbatch", "=x"], "--sbatch", "'=x'", "KEY=VALUE")
cli("sbatch-bad-key", ["--sbatch", "bad key=x"], "command line (resource options)", "option 'bad key'", "sbatch option name")
cli("poll-zero", ["--poll", "0"], "--poll", "got '0'", "finite number > 0")
cli("world-seed-negative", ["--world-seed=-1"], "--world-seed", "got '-1'", "integer >= 0")
cli("results-file", ["--results", "{tmp}/afile"], "--results", "afile", "is a file; expected a directory")
cli("results-under-file", ["--results", "{tmp}/afile/sub"], "--results", "afile", "is a file")
cli("world-root-file", ["--world-root", "{tmp}/afile"], "--world-root", "is a file; expected a directory")
cli("override-bad-value", ["model.frames=zero"], "command line", "model.frames: got 'zero'", "integer")
cli("override-unknown", ["train.epoch=3"], "command line", "unknown field 'epoch' of train", "epochs")
cli("override-bad-yaml", ["model.prompt=[a"], "command line", "model.prompt: got '[a'", "not a YAML value")
cli("override-no-key", ["=3"], "command line", "'=3'", "key=value")
cli("override-inf", ["train.epochs=.inf"], "command line", "train.epochs: got inf", "finite")
cli("override-bool-batch", ["train.batch_size=true"], "command line", "train.batch_size: got True", "not a boolean")
cli("json-without-dry-run", ["--json"], "--json needs --dry-run", dry=False)
cli("only-unknown", ["--only", "nope"], "spec.yaml", "no variant(s) ['nope']", "variants: v")
cli("signal-in-startup", ["--executor", "slurm", "--time", "1", "--signal-delay-s", "50"],
    "resources.signal_delay_s=50", "1-min SLURM limit", "expected resources.timeout_min >= 2")
cli("signal-near-limit", ["--executor", "slurm", "--time", "3", "--signal-delay-s", "150"],
    "resources.signal_delay_s=150", "expected resources.signal_delay_s <= 120")

bare("no-spec", ["run", "train.epochs=3", "--results", "{tmp}/results"], "no spec file given")
bare("tune-workers-zero", ["tune", "x.yaml", "--workers", "0"], "--workers 0", "expected >= 1")
bare("tune-timeout-zero", ["tune", "x.yaml", "--timeout-min", "0"], "--timeout-min", "finite number > 0")
bare("tune-results-file", ["tune", "x.yaml", "--results", "{tmp}/afile"], "--results", "is a file")
bare("tune-partition-newline", ["tune", "x.yaml", "--partition", "a\nb"], "--partition", CONTROL)
bare("world-root-is-file", ["world", "build", "--root", "{tmp}/afile"], "--root", "is a file")
bare("world-seed-word", ["world", "build", "--seed", "x"], "--seed", "got 'x'", "integer >= 0")
bare("sync-results-file", ["sync", "--results", "{tmp}/afile"], "--results", "is a file")
bare("status-results-file", ["status", "--results", "{tmp}/afile"], "--results", "is a file")
bare("table6-parallelism", ["table6", "--parallelism", "0", "--dry-run"], "--parallelism", "integer >= 1")


# ---------------------------------------------------------------------------------- files (pre-flight)
def files(cid: str, mutate: Callable[[Path, dict], None], *frags: str, extra: tuple[str, ...] = ()) -> None:
    """A spec that validates but names what the job would not find or could not use: refused by the
    pre-flight of a real (not dry) run, before anything is submitted."""
    def build(tmp: Path, mp: Any):
        body = base_spec(tmp)
        mutate(tmp, body)
        path = _write(tmp, body)
        return _run_args(path, tmp, *extra, dry=False), ["pre-flight", "nothing was submitted", "spec.yaml", "variants.v",
                                                         *frags]

    case(f"files-{cid}", build)


def _write_data(name: str, text: Any) -> Callable[[Path, dict], None]:
    def mutate(tmp: Path, body: dict) -> None:
        path = tmp / "data" / name
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)

    return mutate


def _dataset(key: str, value: Any) -> Callable[[Path, dict], None]:
    def mutate(tmp: Path, body: dict) -> None:
        body["dataset"][key] = value(tmp) if callable(value) else value

    return mutate


def _fields(**values: Any) -> Callable[[Path, dict], None]:
    def mutate(tmp: Path, body: dict) -> None:
        for dotted, value in values.items():
            _set(body, dotted.replace("__", "/"), value(tmp) if callable(value) else value)

    return mutate


def _lexicon(n: int) -> Callable[[Path], str]:
    def make(tmp: Path) -> str:
        path = tmp / "lexicon.txt"
        path.write_text("".join(f"phrase {i}\n" for i in range(n)))
        return str(path)

    return make


def _empty_dir(tmp: Path) -> str:
    (tmp / "emptyrun").mkdir(exist_ok=True)
    return str(tmp / "emptyrun")


files("class-file-missing", _dataset("class_file", lambda t: str(t / "nope.csv")), "data.class_file", "nope.csv",
      "class file not found")
files("class-file-directory", _dataset("class_file", lambda t: str(t)), "data.class_file", "Is a directory")
files("class-file-latin1", _write_data("classes.csv", "id,name\n0,caf\u00e9\n".encode("latin-1")), "data.class_file",
      "utf-8")
files("class-file-header", _write_data("classes.csv", "idx,label\n0,a\n"), "data.class_file", "header", "'id,name'")
files("class-file-gap", _write_data("classes.csv", "id,name\n0,a\n2,b\n"), "data.class_file", "field 'id': got 2",
      "expected 1")
files("class-file-empty", _write_data("classes.csv", ""), "data.class_file", "empty class file")
files("val-missing", _dataset("val_list", lambda t: str(t / "nope.txt")), "data.val_list", "nope.txt", "list file not found")
files("val-label-range", _write_data("val.txt", "v0.mp4 0\nv1.mp4 7\n"), "data.val_list", "val.txt:2", "label 7 is out of range",
      "expected 0..2")
files("val-negative-label", _write_data("val.txt", "v0.mp4 -1\n"), "data.val_list", "val.txt:1", "got -1", "integer >= 0")
files("val-three-fields", _write_data("val.txt", "v0.mp4 0 extra\n"), "data.val_list", "val.txt:1", "got 3 field(s)",
      "<relative_path> <label>")
files("val-word-label", _write_data("val.txt", "v0.mp4 zero\n"), "data.val_list", "field 'label': got 'zero'")
files("val-duplicate", _write_data("val.txt", "v0.mp4 0\nv0.mp4 1\n"), "data.val_list", "duplicates line 1")
files("val-multi-label", _write_data("val.txt", "v0.mp4 0,1\n"), "data.val_list", "got '0,1'", "data.multi_label")
files("val-latin1", _write_data("val.txt", "caf\u00e9.mp4 0\n".encode("latin-1")), "data.val_list", "not a UTF-8 text file")
files("val-empty", _write_data("val.txt", "# nothing\n"), "data.val_list", "no entries")
files("train-label-range", _write_data("train.txt", "t0.mp4 0\nt1.mp4 3\n"), "data.train_list", "train.txt:2",
      "label 3 is out of range")
files("train-unset", _dataset("train_list", None), "data.train_list is not set")
files("pretrained-missing", _fields(model__pretrained="/nope/clip.pt"), "model.pretrained: got '/nope/clip.pt'",
      "no such file")
files("pretrained-directory", _fields(model__pretrained=lambda t: str(t) + "/"), "model.pretrained", "a directory")
files("text-encoder-weights-missing", _fields(attributes__text_encoder_pretrained="enc.pt"),
      "attributes.text_encoder_pretrained: got 'enc.pt'", "no such file")
files("init-from-missing", _fields(variants__v__init_from="/nope/run"), "init_from: got '/nope/run'",
      "no such file or directory")
files("init-from-empty-dir", _fields(variants__v__init_from=_empty_dir), "init_from", "a directory without checkpoints")
files("lexicon-missing", _fields(attributes__lexicon="/nope/lexicon.txt"), "attributes.lexicon: got '/nope/lexicon.txt'",
      "not found")
files("lexicon-too-small", _fields(attributes__lexicon=_lexicon(29), attributes__num_attributes=50,
                                   attributes__max_attributes=50),
      "attributes.num_attributes: got 50", "holds 29 phrase(s)", "at most 29")
files("backbone-unknown", _fields(model__backbone="ViT-B-33"), "model.backbone: got 'ViT-B-33'",
      "not an open_clip model config", "ViT-B-32")
files("text-encoder-unknown", _fields(attributes__text_encoder="bike-huge"), "attributes.text_encoder: got 'bike-huge'",
      "not an open_clip model config")
files("generator-unknown", _fields(attributes__generator_backbone="ViT-Q-1"), "attributes.generator_backbone: got 'ViT-Q-1'")
files("frames-beyond-table", _fields(model__frames=100), "model.frames: got 100", "position table has 77 rows",
      "at most 77")
files("accum-not-dividing", _fields(train__grad_accum=3), "train.batch_size: got 4", "train.grad_accum 3",
      "multiple of")
files("world-not-dividing", _fields(train__batch_size=4), "train.batch_size: got 4", "world size 3",
      extra=("--tasks-per-node", "3"))
files("batch-beyond-dataset", _fields(train__batch_size=64), "train.batch_size: got 64", "holds 12 video(s)",
      "expected train.batch_size <= 12")
files("batch-beyond-holdout", _fields(train__batch_size=12, dataset__tuning_holdout=0.5),
      "train.batch_size: got 12", "after the tuning holdout")
files("attributes-stage-untrained", _fields(variants__v__stage="attributes"), "attributes.train: got False",
      "stage 'attributes'", "attributes.train: true")
files("attributes-stage-disabled", _fields(variants__v__stage="attributes", attributes__enabled=False,
                                           attributes__train=True), "attributes.enabled: False")
files("tune-without-holdout", _fields(eval__split="tune"), "eval.split: got 'tune'", "data.tuning_holdout > 0")
files("select-tune-without-holdout", _fields(train__select_on="tune"), "train.select_on: got 'tune'", "tuning_holdout")
files("k600-split-missing", _fields(eval__protocol="zero_shot_k600", eval__k600_split_files=["/nope/split1.csv"]),
      "eval.k600_split_files[0]: got '/nope/split1.csv'", "no such file")
files("charades-classes", _dataset("format", "charades"), "data.class_file", "classes.csv:1",
      "expected '<cNNN> <class name>'")


def _k600_split_lists(second_list: str, second_classes: str = "id,name\n0,jumping\n1,swimming\n"):
    """The released K600 protocol: split 1 is the base list and class file, split 2 its own pair of files."""
    def mutate(tmp: Path, body: dict) -> None:
        d = tmp / "data"
        (d / "test_split2_exist.txt").write_text(second_list)
        (d / "k160_labels_split2.csv").write_text(second_classes)
        body["eval"] = {"protocol": "zero_shot_k600",
                        "k600_split_lists": [str(d / "val.txt"), str(d / "test_split2_exist.txt")],
                        "k600_split_files": [str(d / "classes.csv"), str(d / "k160_labels_split2.csv")]}

    return mutate


# label 2 is a class of the run's class file (3 classes) but not of split 2's (2 classes)
files("k600-split-list-label-range", _k600_split_lists("v0.mp4 0\nv1.mp4 2\n"), "eval.k600_split_lists[1]",
      "test_split2_exist.txt:2", "label 2 is out of range", "expected 0..1", "eval.k600_split_files[1]")
files("k600-split-list-missing", _fields(eval=lambda t: {"protocol": "zero_shot_k600", "k600_split_lists": ["/nope/split1.txt"],
                                                          "k600_split_files": [str(t / "data" / "classes.csv")]}),
      "eval.k600_split_lists[0]: got '/nope/split1.txt'", "list file not found")
files("k600-split-class-file-bad", _k600_split_lists("v0.mp4 0\n", "idx,label\n0,a\n"), "eval.k600_split_files[1]",
      "k160_labels_split2.csv:1", "'id,name'")
spec_field("k600-split-lists-length", "eval", {"protocol": "zero_shot_k600", "k600_split_lists": ["a.txt", "b.txt"],
                                               "k600_split_files": ["a.csv"]},
           "eval.k600_split_lists: got 2 list(s) but eval.k600_split_files has 1", "one class file per split list")


# ---------------------------------------------------------------------------------- sweeps
def sweep(cid: str, change: dict, *frags: str, overrides: tuple[str, ...] = (), raw: Any = None, named: bool = True) -> None:
    def build(tmp: Path, mp: Any):
        path = tmp / "sweep.yaml"
        (tmp / "run").mkdir(exist_ok=True)
        body = {"study": "s", "source_run": str(tmp / "run"), **change}
        if raw is not None:
            path.write_bytes(raw) if isinstance(raw, bytes) else path.mkdir() if raw == "dir" else path.write_text(raw)
        else:
            path.write_text(yaml.safe_dump(body, sort_keys=False))
        return (["tune", str(path), "--no-track", "--results", str(tmp / "results"), *overrides],
                ["sweep.yaml"] * named + list(frags))

    case(f"sweep-{cid}", build)


sweep("study-dotdot", {"study": ".."}, "study='..'", "no path components")
sweep("study-parent", {"study": "../x"}, "study='../x'", "no path components")
sweep("study-path", {"study": "a/b"}, "study='a/b'", "names a directory")
sweep("study-empty", {"study": ""}, "study: got ''", "at least 1 character")
sweep("study-long", {"study": "s" * 65}, "study='ssss", "1-64 characters")
sweep("study-newline", {"study": "a\nb"}, "study", CONTROL)
sweep("study-override", {}, "study='../x'", "no path components", overrides=("study=../x",))
sweep("n-trials-zero", {"n_trials": 0}, "n_trials: got 0", "greater than or equal to 1")
sweep("n-trials-true", {"n_trials": True}, "n_trials: got True", "not a boolean")
sweep("workers-zero", {"workers": 0}, "workers: got 0", "greater than or equal to 1")
sweep("sampler", {"sampler": "random"}, "sampler: got 'random'", "'tpe'")
sweep("objective", {"objective": "top5"}, "objective: got 'top5'", "'fused_top1'")
sweep("unknown-field", {"n_trial": 3}, "n_trial: got 3", "unknown field", "n_trials")
sweep("no-source", {"source_run": None}, "give source_run")
sweep("lam-range", {"space": {"lam": 1.5}}, "space.lam", "[0, 1]")
sweep("k-zero", {"space": {"k": 0}}, "space.k", ">= 1")
sweep("seed-huge", {"seed": 2**70}, "seed: got 1180591620717411303424", "less than or equal to")
sweep("timeout-inf", {"timeout_s": float("inf")}, "timeout_s: got inf", "finite")
sweep("worker-timeout-zero", {"resources": {"timeout_min": 0}}, "resources.timeout_min: got 0", "greater than 0")
sweep("partition-newline", {"resources": {"slurm": {"partition": "a\nb"}}}, "resources.slurm.partition", CONTROL)
sweep("split-holdout", {"split": "val"}, "split='val'", "tune_on")
sweep("duplicate-key", {}, "found duplicate key 'study'", raw="study: a\nstudy: b\nsource_run: r\n")
sweep("non-utf8", {}, "not a UTF-8 text file", raw=b"study: \xff\n")
sweep("directory", {}, "is a directory", raw="dir")
sweep("alias-bomb", {}, "expands to more than", raw="a: &a [x, x, x, x, x, x, x, x, x]\n" + BOMB)
sweep("override-bad-yaml", {}, "n_trials: got '['", "not a YAML value", overrides=("n_trials=[",))
sweep("override-no-equals", {}, "unrecognized arguments: n_trials", overrides=("n_trials",), named=False)
sweep("override-empty-key", {}, "override 'space..k=2'", "key=value", overrides=("space..k=2",))
sweep("override-newline", {}, "override", CONTROL, overrides=("study=a\nb",))


CATEGORIES = ("spec", "yaml", "names", "cli", "files", "sweep")


def _category(cid: str) -> str:
    return "names" if cid.startswith(("spec-name-", "spec-variant-", "spec-partition-", "spec-account-", "spec-qos-",
                                      "spec-sbatch-", "spec-setup-", "spec-root-", "spec-prompt-", "spec-cell-row-",
                                      "spec-description-", "spec-line-", "spec-set-key-")) else cid.split("-")[0]


def test_case_count_per_category():
    counts = {c: 0 for c in CATEGORIES}
    for cid, _ in CASES:
        counts[_category(cid)] += 1
    assert len({cid for cid, _ in CASES}) == len(CASES), "case ids must be unique"
    assert sum(counts.values()) >= 120 and all(counts.values()), counts


@pytest.mark.parametrize("cid,builder", CASES, ids=[cid for cid, _ in CASES])
def test_bad_input_is_refused_with_a_message(cid, builder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv, fragments = builder(tmp_path, monkeypatch)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refuses an option's value with exit code 2
        code = exc.code
    out, err = capsys.readouterr()
    text = out + err
    assert code == 2, f"{cid}: exit code {code}\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    assert len(err) < MAX_MESSAGE, f"{cid}: a message of {len(err)} characters"
    for fragment in fragments:
        assert fragment in err, f"{cid}: {fragment!r} not in the message:\n{err[-3000:]}"
    assert not (tmp_path / "results" / "runs").exists() or not any((tmp_path / "results" / "runs").iterdir()), \
        f"{cid}: a run directory was made"


def test_the_base_spec_passes_every_check(tmp_path, monkeypatch, capsys):
    """The control: the spec the cases start from is accepted, pre-flight included."""
    from harness.expand import expand
    from harness.preflight import check_plan
    from harness.spec import load_spec

    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, base_spec(tmp_path))
    assert check_plan(expand(load_spec(path), "full", tmp_path / "results")) == []
    assert main(_run_args(path, tmp_path)) == 0
    assert "pre-flight" not in capsys.readouterr().err

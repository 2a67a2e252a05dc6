"""Harness speed targets.

* Expanding and (dry-run) submitting a 500-run sweep with the local executor: under 5 s.
* MLflow logging cost per training step (metrics.jsonl replayed with ``log_batch``): under 1 % of
  one training step of the tiny model (bike-tiny, 8 videos x 8 frames x 64², forward + backward).

Run: ``python -m pytest -q benchmarks/test_bench_harness.py --benchmark-enable --benchmark-only``.
The per-step ratio is printed and stored in the benchmark's ``extra_info``.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import torch
import yaml

from bike.config import RunConfig
from harness.executor import Runner
from harness.expand import expand
from harness.rundir import RunDir
from harness.spec import load_spec
from harness.tracking import Tracker, default_tracking_uri

SWEEP_RUNS = 500
LOGGED_STEPS = 200  # metrics.jsonl lines per logged run
#: What the engine's training loop writes per logged step (bike.engine.train_loop): epoch, loss,
#: logit_scale, lr_clip, lr_new, steps_per_s.
METRICS_PER_LINE = 6
TINY_BATCH, TINY_FRAMES = 8, 8


def sweep_spec(path: Path) -> Path:
    """250 stage-1 variants (lr x seed) and 250 stage-2 variants depending on them: 500 runs."""
    variants = {}
    lrs = [round(1e-6 * (i + 1), 9) for i in range(125)]
    for i, (lr, seed) in enumerate(itertools.product(lrs, (0, 1))):
        # a hyper-parameter sweep fills no published cell (the spec loader accepts only the paper's cells)
        variants[f"v{i}"] = {"set": {"train.lr_new": lr, "seed": seed}}
        variants[f"a{i}"] = {"stage": "attributes", "init_from": {"variant": f"v{i}"}, "set": {"attributes.train": True}}
    body = {"name": "sweep500", "family": "general",
            "dataset": {"name": "k400", "root": "/d", "val_list": "/d/val.txt", "class_file": "/d/c.csv"},
            "variants": variants}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_bench_expand_and_submit_500_runs(benchmark, tmp_path):
    path = sweep_spec(tmp_path / "sweep.yaml")

    def plan_and_submit():
        plan = expand(load_spec(path), "full", tmp_path / "results")
        runner = Runner(tmp_path / "results", "local", parallelism=4, log=lambda m: None)
        outcomes = runner.execute(plan, dry_run=True)
        return plan, outcomes, runner

    plan, outcomes, runner = benchmark.pedantic(plan_and_submit, rounds=3, iterations=1)
    assert len(plan.runs) == SWEEP_RUNS and len(outcomes) == SWEEP_RUNS
    assert sum(len(s.run_ids) for s in runner.submissions) == SWEEP_RUNS
    benchmark.extra_info["runs"] = SWEEP_RUNS
    benchmark.extra_info["target_s"] = 5.0


def _tiny_step_seconds(repeats: int = 5) -> float:
    """Median seconds of one training step of bike-tiny's image tower + contrastive loss."""
    import open_clip

    from bike.backbone import MODEL_CONFIG_DIR

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    model = open_clip.create_model("bike-tiny", pretrained=None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    frames = torch.randn(TINY_BATCH * TINY_FRAMES, 3, 64, 64)
    text = torch.randint(0, 49408, (TINY_BATCH, 77))
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        img = model.encode_image(frames).view(TINY_BATCH, TINY_FRAMES, -1).mean(1)
        txt = model.encode_text(text)
        logits = torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T * 100
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(TINY_BATCH))
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def test_bench_mlflow_logging_per_training_step(benchmark, tmp_path):
    tracker = Tracker(tmp_path, default_tracking_uri(tmp_path))
    tracker.parent_run("bench", "smoke")
    counter = itertools.count()

    def make_run_dir() -> tuple[tuple[RunDir], dict]:
        cfg = RunConfig.model_validate({"seed": next(counter)})
        rd = RunDir.for_run(tmp_path, cfg.content_hash())
        rd.prepare(cfg.to_yaml(), {"requested_by": [{"spec": "bench", "variant": "v", "scale": "smoke"}]})
        lines = [json.dumps({"epoch": s / 100, "kind": "train", "logit_scale": 100.0 - s * 1e-4, "loss": 1.0 / s,
                             "lr_clip": 5e-6, "lr_new": 5e-5, "step": s, "steps_per_s": 10.0, "time": 1.0 + s})
                 for s in range(1, LOGGED_STEPS + 1)]
        rd.metrics_path.write_text("\n".join(lines) + "\n")
        rd.write_state("running")  # a started job: the tracker logs runs from their start on
        return (rd,), {}

    def log(rd: RunDir) -> str:
        return tracker.log_run_dir(rd, "bench", "v", "smoke")

    outcome = benchmark.pedantic(log, setup=make_run_dir, rounds=5, iterations=1)
    assert outcome == "created"
    per_step = benchmark.stats.stats.median / LOGGED_STEPS  # per metrics line
    step = _tiny_step_seconds()
    ratio = per_step / step
    from bike.config import TrainConfig
    from harness.spec import SMOKE_LOG_EVERY

    # the engine writes a metrics line every log_every steps: the cost per training step is the cost
    # per line over log_every (full scale: the default; smoke: SMOKE_LOG_EVERY)
    default_every = TrainConfig().log_every
    benchmark.extra_info.update(per_line_ms=per_step * 1e3, tiny_step_ms=step * 1e3, metrics_per_line=METRICS_PER_LINE,
                                overhead_percent_if_every_step=100 * ratio,
                                overhead_percent_smoke=100 * ratio / SMOKE_LOG_EVERY, smoke_log_every=SMOKE_LOG_EVERY,
                                overhead_percent_default=100 * ratio / default_every, default_log_every=default_every,
                                target_percent=1.0)
    print(f"\nMLflow logging {per_step * 1e3:.3f} ms per metrics line vs tiny-model step {step * 1e3:.1f} ms: "
          f"{100 * ratio / SMOKE_LOG_EVERY:.3f} % per step at smoke (a line every {SMOKE_LOG_EVERY} steps), "
          f"{100 * ratio / default_every:.3f} % at the default (every {default_every})")

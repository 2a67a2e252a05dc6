"""bike.train: end to end on real mp4s, exact resume, few-shot, max_steps, stage 2, the CLI."""

import json
from pathlib import Path

import pytest
import torch

import bike.train as train_mod
from bike.engine import train_loop
from bike.engine.checkpoint import load_checkpoint
from bike.engine.logging import read_metrics
from tests.bike.engine.tinyrun import make_dataset, tiny_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("train_data"))


def _weights(run_dir):
    return load_checkpoint(Path(run_dir) / "checkpoints" / "latest.pt")["model"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_run_writes_the_run_directory_and_is_idempotent(data, tmp_path, monkeypatch):
    cfg = tiny_config(data)
    seen = []
    res = train_mod.run(cfg, tmp_path / "run", progress=False, on_metrics=lambda m, s: seen.append((m.get("kind"), s)))
    run = tmp_path / "run"
    for f in ("config.yaml", "log.txt", "metrics.jsonl", "result.json", "checkpoints/latest.pt", "checkpoints/best.pt",
              "cache/val/video_scores.npy", "cache/val/manifest.json"):
        assert (run / f).is_file(), f
    assert res["status"] == "done" and res["run_id"] == cfg.content_hash() and res["stage"] == "video"
    assert res["counts"] == {"evaluated": 6, "skipped": 0, "bad_files": [], "padded": 0, "padded_files": []}
    assert res["train_counts"] == {"skipped": 0, "bad_files": [], "padded": 0, "padded_files": []}
    assert res["selected_on"] == "val" and res["steps"] == 6  # 12 videos / batch 4 x 2 epochs
    assert 0 <= res["metrics"]["top1"] <= 100 and "mean_class" in res["metrics"]
    kinds = [r["kind"] for r in read_metrics(run)]
    assert kinds.count("train") == 6 and kinds.count("val") == 2 and kinds[-1] == "final"
    assert ("val", 6) in seen
    lrs = [r["lr_new"] for r in read_metrics(run) if r["kind"] == "train"]
    assert lrs[0] == 0.0 and max(lrs) <= cfg.train.lr_new  # warm-up from 0
    # a finished run is not run again
    monkeypatch.setattr(train_loop.Trainer, "fit", lambda self: pytest.fail("ran again"))
    assert train_mod.run(cfg, run, progress=False)["elapsed_s"] == res["elapsed_s"]


class _Interrupt(Exception):
    pass


def test_resume_at_epoch_boundary_and_mid_epoch_is_exact(data, tmp_path, monkeypatch):
    cfg = tiny_config(data, train={"select_on": "none"})
    train_mod.run(cfg, tmp_path / "straight", progress=False)
    straight = _weights(tmp_path / "straight")

    # 1 epoch, crash, resume
    original = train_loop.Trainer.save_latest

    def save_then_crash(self):
        original(self)
        raise _Interrupt

    monkeypatch.setattr(train_loop.Trainer, "save_latest", save_then_crash)
    with pytest.raises(_Interrupt):
        train_mod.run(cfg, tmp_path / "resumed", progress=False)
    assert load_checkpoint(tmp_path / "resumed/checkpoints/latest.pt")["progress"]["epoch"] == 1
    monkeypatch.setattr(train_loop.Trainer, "save_latest", original)
    train_mod.run(cfg, tmp_path / "resumed", progress=False)
    _assert_same_weights(straight, _weights(tmp_path / "resumed"))

    # stop on request after the 4th optimiser step (mid-epoch), resume
    def stop_at_4(metrics, step):
        if metrics.get("kind") == "train" and step == 4:
            train_loop.request_stop()

    with pytest.raises(train_loop.Preempted):
        train_mod.run(cfg, tmp_path / "preempted", progress=False, on_metrics=stop_at_4)
    prog = load_checkpoint(tmp_path / "preempted/checkpoints/latest.pt")["progress"]
    assert (prog["epoch"], prog["batch"], prog["step"]) == (1, 1, 4)
    train_mod.run(cfg, tmp_path / "preempted", progress=False)
    _assert_same_weights(straight, _weights(tmp_path / "preempted"))


def test_max_steps_and_grad_accumulation(data, tmp_path):
    cfg = tiny_config(data, train={"max_steps": 2, "grad_accum": 2, "select_on": "none"})
    res = train_mod.run(cfg, tmp_path / "r", progress=False)
    assert res["steps"] == 2 and res["best_epoch"] is None
    assert res["selection_note"].startswith("last checkpoint")


def test_batch_not_divisible_is_a_clear_error(data, tmp_path):
    cfg = tiny_config(data, train={"batch_size": 5, "grad_accum": 2})
    with pytest.raises(ValueError, match="not divisible"):
        train_mod.run(cfg, tmp_path / "r", progress=False)


def test_few_shot_keeps_iterations_and_writes_the_choice(data, tmp_path):
    cfg = tiny_config(data, train={"few_shot": 1, "epochs": 1, "select_on": "none"})
    res = train_mod.run(cfg, tmp_path / "r", progress=False)
    chosen = (tmp_path / "r" / "few_shot_list.txt").read_text().split("\n")
    chosen = [c for c in chosen if c]
    assert len(chosen) == 3 and sorted(c.split()[1] for c in chosen) == ["0", "1", "2"]
    assert res["steps"] == 3  # the full list's 12 videos / 4 per step


def test_stage_two_trains_attribute_heads_from_stage_one(data, tmp_path, monkeypatch):
    attrs = {"enabled": True}
    s1 = tiny_config(data, attributes=attrs, train={"epochs": 1, "select_on": "none"})
    r1 = train_mod.run(s1, tmp_path / "s1", progress=False)
    cache = json.loads((tmp_path / "s1/cache/attributes.json").read_text())
    assert len(cache["videos"]) == 6 and all(len(v) == 5 for v in cache["videos"].values())
    assert {"attr_top1", "fused_top1", "video_top1", "fusion_lambda"} <= r1["metrics"].keys()

    s2 = tiny_config(data, stage="attributes", init_from=str(tmp_path / "s1"),
                     attributes={"enabled": True, "train": True}, train={"epochs": 2, "lr_new": 1e-2})
    calls = []
    import bike.engine.attributes_cache as ac

    real = ac.generate_for_records
    monkeypatch.setattr(ac, "generate_for_records", lambda c, recs, *a: calls.append(len(recs)) or real(c, recs, *a))
    r2 = train_mod.run(s2, tmp_path / "s2", progress=False)
    assert calls == [12]  # only the training videos were missing; the val videos came from stage 1
    before, after = _weights(tmp_path / "s1"), _weights(tmp_path / "s2")
    heads = [k for k in after if k.startswith("attributes.heads.")]
    assert heads and all(k not in before for k in heads)
    for k in before:  # the video branch and the towers did not move
        if not k.startswith("logit_scale"):
            assert torch.equal(before[k], after[k]), k
    assert r2["metrics"]["video_top1"] == pytest.approx(r1["metrics"]["video_top1"])
    assert r2["stage"] == "attributes" and "attr_top1" in r2["metrics"]


def test_main_entry_point(data, tmp_path, capsys):
    cfg = tiny_config(data, train={"max_steps": 1, "epochs": 1, "select_on": "none"})
    path = tmp_path / "run.yaml"
    path.write_text(cfg.to_yaml())
    assert train_mod.main(["--config", str(path), "--run-dir", str(tmp_path / "r"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "r" / "result.json").read_text())["status"] == "done"
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 3\n")
    assert train_mod.main(["--config", str(bad), "--run-dir", str(tmp_path / "b")]) == 2
    assert "bad.yaml" in capsys.readouterr().err


def test_skipped_and_padded_training_videos_are_in_the_run_record(data, tmp_path):
    """A training video that cannot be read is skipped and a 1-frame one padded: result.json and
    log.txt name both (not only the job's stderr)."""
    import numpy as np

    from bike.data.video_io import write_mp4

    root = Path(data["root"])
    (tmp_path / "empty.mp4").write_bytes(b"")
    write_mp4(tmp_path / "one_frame.mp4", np.full((1, 64, 64, 3), 120, dtype=np.uint8))
    train_list = tmp_path / "train.txt"
    lines = Path(data["train_list"]).read_text().splitlines()
    train_list.write_text("\n".join(lines + [f"{tmp_path / 'empty.mp4'} 0", f"{tmp_path / 'one_frame.mp4'} 1"]) + "\n")
    cfg = tiny_config({**data, "train_list": str(train_list), "bad_video_threshold": 0.2},
                      train={"epochs": 1, "select_on": "none"})
    res = train_mod.run(cfg, tmp_path / "run", progress=False)
    tc = res["train_counts"]
    assert tc["skipped"] == 1 and tc["bad_files"] == [str(tmp_path / "empty.mp4")]
    assert tc["padded"] == 1 and tc["padded_files"] == [str(tmp_path / "one_frame.mp4")]
    assert json.loads((tmp_path / "run" / "result.json").read_text())["train_counts"] == tc
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "1 skipped as bad" in log and "1 padded (fewer frames than the clip's 2)" in log and "one_frame.mp4" in log
    assert root.is_dir()

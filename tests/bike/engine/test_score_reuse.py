"""bike.engine.score_reuse: evaluation-only and stage-2 runs read their init run's cached video scores."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.bike.engine.tinyrun import make_dataset, tiny_config  # noqa: E402

import bike.engine.eval_loop as eval_loop  # noqa: E402
import bike.evaluate as evaluate_mod  # noqa: E402
import bike.train as train_mod  # noqa: E402
from bike.engine.caches import read_cache  # noqa: E402
from bike.engine.score_reuse import KEY_FIELD, weights_digest  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("reuse_data"), per_class_train=2, per_class_val=2)


@pytest.fixture(scope="module")
def stage1(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reuse") / "s1"
    train_mod.run(tiny_config(data, train={"epochs": 1, "select_on": "none"}), run_dir, progress=False)
    return run_dir


def _forbid_scoring(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the videos were scored again although a cache with the same key exists")

    monkeypatch.setattr(eval_loop, "score_videos", fail)


def test_eval_only_run_reads_the_init_runs_video_scores(data, stage1, tmp_path, monkeypatch):
    cfg = tiny_config(data, stage="eval", init_from=str(stage1), attributes={"enabled": True}, fusion={"lam": 0.5})
    # reference: the same evaluation with reuse impossible (the videos are scored)
    import bike.engine.score_reuse as sr

    real_find = sr.find_reusable
    monkeypatch.setattr(sr, "find_reusable", lambda *a, **k: None)
    scored = evaluate_mod.run(cfg, tmp_path / "scored", progress=False)
    assert scored["video_scores_from"] is None
    monkeypatch.setattr(sr, "find_reusable", real_find)

    _forbid_scoring(monkeypatch)
    reused = evaluate_mod.run(cfg, tmp_path / "reused", progress=False)
    assert reused["video_scores_from"] == str(stage1 / "cache" / "val")
    a, b = read_cache(tmp_path / "scored/cache/val"), read_cache(tmp_path / "reused/cache/val")
    np.testing.assert_array_equal(a.video_scores, b.video_scores)
    np.testing.assert_array_equal(a.attr_scores, b.attr_scores)
    assert a.video_ids == b.video_ids and a.extra[KEY_FIELD] == b.extra[KEY_FIELD]
    assert reused["metrics"] == scored["metrics"] and reused["counts"] == scored["counts"]


@pytest.mark.parametrize("change", [{"eval": {"crops": 3}}, {"model": {"prompt": "a video of {}"}}])
def test_a_change_to_the_video_side_scores_the_videos_again(data, stage1, tmp_path, monkeypatch, change):
    cfg = tiny_config(data, stage="eval", init_from=str(stage1), **change)
    calls = []
    real = eval_loop.score_videos
    monkeypatch.setattr(eval_loop, "score_videos", lambda *a, **k: calls.append(1) or real(*a, **k))
    res = evaluate_mod.run(cfg, tmp_path / "r", progress=False)
    assert calls == [1] and res["video_scores_from"] is None


def test_a_cache_with_another_key_is_not_reused(data, stage1, tmp_path, monkeypatch):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(stage1, src)
    manifest = src / "cache" / "val" / "manifest.json"
    m = json.loads(manifest.read_text())
    m["extra"][KEY_FIELD] = "0" * 64  # e.g. written by another code version
    manifest.write_text(json.dumps(m))
    calls = []
    real = eval_loop.score_videos
    monkeypatch.setattr(eval_loop, "score_videos", lambda *a, **k: calls.append(1) or real(*a, **k))
    res = evaluate_mod.run(tiny_config(data, stage="eval", init_from=str(src)), tmp_path / "r", progress=False)
    assert calls == [1] and res["video_scores_from"] is None


def test_stage_two_final_evaluation_reuses_the_frozen_video_branch(data, stage1, tmp_path, monkeypatch):
    s2 = tiny_config(data, stage="attributes", init_from=str(stage1), attributes={"enabled": True, "train": True},
                     train={"epochs": 1, "lr_new": 1e-2})
    _forbid_scoring(monkeypatch)
    res = train_mod.run(s2, tmp_path / "s2", progress=False)
    assert res["video_scores_from"] == str(stage1 / "cache" / "val")
    np.testing.assert_array_equal(read_cache(stage1 / "cache/val").video_scores, read_cache(tmp_path / "s2/cache/val").video_scores)
    assert "attr_top1" in res["metrics"]


def test_weights_digest_ignores_only_the_attributes_branch_and_logit_scale():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Linear(3, 2)
            self.attributes = torch.nn.Linear(2, 2)
            self.logit_scale = torch.nn.Module()
            self.logit_scale.log_scale = torch.nn.Parameter(torch.zeros(()))

    m = Tiny()
    d0 = weights_digest(m)
    with torch.no_grad():
        m.attributes.weight.add_(1.0)
        m.logit_scale.log_scale.add_(1.0)
    assert weights_digest(m) == d0
    with torch.no_grad():
        m.backbone.bias[0] += 1e-6
    assert weights_digest(m) != d0


def _eval_ranks(rank, world, port, data, out_dir, sources_by_rank):
    """One rank: evaluate the tiny model into run ``a`` (scored), then into run ``b`` with this rank's
    ``reuse_from`` list; rank 0 records what it got."""
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from bike.distributed import init_distributed
    from bike.engine.datasets import class_names
    from bike.engine.eval_loop import evaluate_split
    from bike.engine.model import BikeModel
    from bike.engine.train_loop import reseed

    init_distributed()
    try:
        cfg = tiny_config(data, stage="eval")
        reseed(cfg.seed)
        model = BikeModel.from_config(cfg, class_names(cfg))
        out = Path(out_dir)
        first = evaluate_split(cfg, model, out / "a", "val", torch.device("cpu"))
        sources = [out / "a"] if rank in sources_by_rank else []
        second = evaluate_split(cfg, model, out / "b", "val", torch.device("cpu"), reuse_from=sources)
        if rank == 0:
            torch.save({"first": first, "second": second}, out / "rank0.pt")
        else:
            assert first is None and second is None
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.timeout(180)
@pytest.mark.parametrize("sources_by_rank, reused", [((0, 1), True), ((1,), False)])
def test_two_ranks_follow_rank_zeros_reuse_decision(data, tmp_path, sources_by_rank, reused):
    """Rank 0 decides: with the source seen by rank 1 only, both ranks score (no rank left waiting)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_eval_ranks, args=(2, port, data, str(tmp_path), sources_by_rank), nprocs=2, join=True)
    got = torch.load(tmp_path / "rank0.pt", weights_only=False)
    (m1, c1), (m2, c2) = got["first"], got["second"]
    assert c2["video_scores_from"] == (str(tmp_path / "a" / "cache" / "val") if reused else None)
    assert c1["evaluated"] == c2["evaluated"] == 6
    np.testing.assert_array_equal(read_cache(tmp_path / "a/cache/val").video_scores, read_cache(tmp_path / "b/cache/val").video_scores)

"""harness.importer: `bikebench import official` / `official-scores`, tuning on the imported scores, the zoo spec."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bike.config import RunConfig
from harness.cli import main

N, K = 120, 400


def released_scores(folder: Path, seed: int = 0, *, break_labels: bool = False, drop_row: bool = False) -> Path:
    """The four files of video_sentence_fusion.zip: [N, 400] softmax probabilities and [N] labels, one row order."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, K, (N,), generator=g)
    onehot = torch.nn.functional.one_hot(labels, K).float()
    video = (torch.randn(N, K, generator=g) + 2.5 * onehot * (torch.rand(N, 1, generator=g) > 0.3)).softmax(-1)
    sentence = (torch.randn(N, K, generator=g) + 2.0 * onehot * (torch.rand(N, 1, generator=g) > 0.5)).softmax(-1)
    folder.mkdir(parents=True, exist_ok=True)
    s_labels = labels.clone()
    if break_labels:
        s_labels[7] = (s_labels[7] + 1) % K
    torch.save(video, folder / "k400_video_sims.pt")
    torch.save(labels, folder / "k400_video_labels.pt")
    torch.save(sentence[:-1] if drop_row else sentence, folder / "k400_sentence_sims.pt")
    torch.save(s_labels, folder / "k400_sentence_labels.pt")
    return folder


def released_top1(folder: Path, a: float = 0.7) -> float:
    """utils.utils.fusion_acc of the released code: a * video_sim + (1 - a) * sentence_sim, accuracy top-1."""
    v, s = torch.load(folder / "k400_video_sims.pt"), torch.load(folder / "k400_sentence_sims.pt")
    y = torch.load(folder / "k400_video_labels.pt")
    fusion = a * v + (1 - a) * s
    return float((fusion.topk(1, dim=1).indices[:, 0] == y).double().mean() * 100)


def test_score_files_import_and_fuse_as_released(tmp_path, capsys):
    src = released_scores(tmp_path / "video_sentence_fusion")
    out = tmp_path / "released_va"
    assert main(["import", "official-scores", str(src), "--out", str(out)]) == 0
    assert "fused at λ 0.7" in capsys.readouterr().out
    result = json.loads((out / "result.json").read_text())
    assert result["imported"] is True and result["status"] == "done"
    assert result["metrics"]["fused_top1"] == pytest.approx(released_top1(src), abs=1e-9)
    assert result["source"]["files"]["video_sims"]["sha256"] == hashlib.sha256((src / "k400_video_sims.pt").read_bytes()).hexdigest()
    from bike.engine.caches import load_score_cache

    cache = load_score_cache(out, "val")
    assert cache.score_kind == "probabilities" and cache.extra["attr_score_kind"] == "probabilities"
    assert cache.num_videos == N and cache.num_classes == K and cache.classes[0] == "abseiling"
    assert np.array_equal(cache.labels, torch.load(src / "k400_video_labels.pt").numpy())
    from harness.tuning import fused_metric
    from harness.tuning.problem import FusionProblem

    assert fused_metric(cache, 0.7) == pytest.approx(released_top1(src), abs=1e-9)
    for lam in (0.0, 0.35, 1.0):
        assert fused_metric(cache, lam) == pytest.approx(released_top1(src, lam), abs=1e-9)
    # the released probabilities are the softmax side as they are (not softmaxed again)
    side = FusionProblem(cache).attr_side(None)
    assert np.allclose(side, torch.load(src / "k400_sentence_sims.pt").double().numpy(), atol=1e-7)
    # a zip of the same files imports the same cache
    with zipfile.ZipFile(tmp_path / "video_sentence_fusion.zip", "w") as zf:
        for p in sorted(src.iterdir()):
            zf.write(p, f"video_sentence_fusion/{p.name}")
    assert main(["import", "official-scores", str(tmp_path / "video_sentence_fusion.zip"), "--out", str(tmp_path / "z")]) == 0
    assert json.loads((tmp_path / "z" / "result.json").read_text())["metrics"]["fused_top1"] == result["metrics"]["fused_top1"]


@pytest.mark.parametrize("kind,message", [("labels", r"k400_sentence_labels\.pt: 1 of 120 labels differ"),
                                          ("rows", r"k400_sentence_sims\.pt: shape \(119, 400\) differs")])
def test_score_files_that_disagree_are_refused(tmp_path, capsys, kind, message):
    src = released_scores(tmp_path / "s", break_labels=kind == "labels", drop_row=kind == "rows")
    assert main(["import", "official-scores", str(src), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "o" / "result.json").exists()


def test_tune_on_the_imported_scores(tmp_path):
    src = released_scores(tmp_path / "s", seed=3)
    out = tmp_path / "released_va"
    assert main(["import", "official-scores", str(src), "--out", str(out)]) == 0
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "study": "released_lambda", "source_run": str(out), "tune_on": "reported", "n_trials": 2,
        "results_dir": str(tmp_path / "results"), "space": {"k": None, "lam": "exact"}}))
    from harness.tuning import tune_main

    assert tune_main(sweep, tracking_uri=None) == 0
    best = json.loads((tmp_path / "results" / "studies" / "released_lambda" / "best.json").read_text())
    lo, hi = best["lam_interval"]
    grid = [released_top1(src, a) for a in np.linspace(0, 1, 101)]
    assert 100 * best["best_value"] >= max(grid) - 1e-9  # the exact optimum over λ is at least the grid's best
    assert released_top1(src, 0.5 * (lo + hi)) == pytest.approx(100 * best["best_value"], abs=1e-9)


def test_checkpoint_import_writes_a_run_directory(tmp_path, capsys):
    from tests.bike.test_official import released_clip_state, released_video_head, save_released

    ckpt = save_released(tmp_path / "k400-tiny.pt", released_clip_state(), released_video_head())
    out = tmp_path / "imported"
    assert main(["import", "official", str(ckpt), "--out", str(out), "--frames", "8"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["imported"] is True and result["source"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    config = RunConfig.from_yaml(out / "config.yaml")
    assert config.model.temporal == "transformer" and config.model.pretrained is None and config.model.vcs_tokens == "all"
    assert config.model.frames == 8 and result["model_config"]["temporal_layers"] == 6
    from bike.engine.checkpoint import load_checkpoint, resolve_init_checkpoint
    from bike.official import official_checkpoint_state

    state = load_checkpoint(resolve_init_checkpoint(out))["model"]  # init_from: the imported run directory
    ref = official_checkpoint_state(ckpt)
    assert set(state) == set(ref) and all(torch.equal(state[k], ref[k]) for k in ref)
    # a second import into the same directory is refused without --force
    assert main(["import", "official", str(ckpt), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["import", "official", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "x")]) == 2
    assert "absent.pt" in capsys.readouterr().err


def test_zoo_dry_run_lists_every_row_with_its_file(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    (folder / "k400-vit-b-16-f8.pt").write_bytes(b"")
    monkeypatch.setenv("BIKE_CHECKPOINTS", str(folder))
    assert main(["run", "experiments/zoo.yaml", "--scale", "full", "--dry-run", "--json", "--results", str(tmp_path / "r")]) == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    registry = yaml.safe_load(Path("harness/data/paper_numbers.yaml").read_text())
    zoo_rows = {(t["id"], r["id"]) for t in registry["tables"] if t["id"] in ("readme_k400", "readme_anet", "readme_charades", "readme_ucf_hmdb")
                for r in t["rows"]}
    listed = {(c["table"], c["row"]) for r in recs for c in r["cells"]}
    assert listed == zoo_rows
    runs = [r for r in recs if r["kind"] != "not_run"]
    for r in recs:
        if r["kind"] == "not_run" and "video_sentence_fusion.zip" in r["reason"]:
            assert "https://github.com/whwu95/BIKE/releases" in r["reason"]
        elif r["kind"] == "not_run":  # a released checkpoint not downloaded: its row says where to get it
            assert ".pt not found: download it from https://" in r["reason"], r["reason"]
    # only the row whose file is there runs; the missing files are no error for it
    assert [r["variant"] for r in runs] == ["k400_vitb16_f8"]
    for r in runs:
        assert r["config"]["init_from"] == str(folder / "k400-vit-b-16-f8.pt")
        assert r["config"]["model"]["pretrained"] is None and r["config"]["model"]["backbone"].endswith("-quickgelu")
    from harness.importer import zoo_rows as rows_of
    from harness.spec import load_spec

    rows = {z.variant: z for z in rows_of(load_spec("experiments/zoo.yaml"))}
    assert rows["k400_vitb16_f8"].exists and not rows["k400_vitl14_f8"].exists
    assert rows["k400_vitl14_f8"].url.startswith("https://") and rows["k400_vitb32_va"].kind == "scores"


def test_table_zoo_dry_run_lists_every_row_with_its_file_and_url(tmp_path, capsys, monkeypatch):
    """`bikebench table zoo --scale full --dry-run`: every released-checkpoint row that is not there is
    listed with its file and where to download it; the one that is there is planned."""
    from harness.importer import zoo_rows as rows_of
    from harness.spec import load_spec

    folder = tmp_path / "ckpts"
    folder.mkdir()
    (folder / "k400-vit-b-16-f8.pt").write_bytes(b"")
    monkeypatch.setenv("BIKE_CHECKPOINTS", str(folder))
    assert main(["table", "zoo", "--scale", "full", "--dry-run", "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    rows = rows_of(load_spec("experiments/zoo.yaml"))
    assert len(rows) >= 14
    for z in rows:
        if z.kind == "checkpoint" and not z.exists:
            assert f"zoo.{z.variant} [" in out and f"{z.file} not found: download it from {z.url}" in out
    assert "zoo.k400_vitb16_f8 [" not in out and "zoo.k400_vitb16_f8" in out  # planned, not listed as not run
    assert "GPU-hours" in out

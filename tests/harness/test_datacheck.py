"""``bikebench data check`` (harness.datacheck, bike.data.integrity) on a tiny dataset with planted bad files."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from bike.data.video_io import write_mp4
from harness import datacheck as dc
from harness.cli import main

#: The planted bad entries and the reason the report must give for each.
EXPECTED_BAD = {
    "videos/missing.mp4": "missing",
    "videos/empty.mp4": "empty",
    "videos/truncated.mp4": "truncated",
    "videos/text.mp4": "undecodable",
    "frames/short": "too_few_frames",
}
GOOD_VIDEOS = ("videos/good0.mp4", "videos/good1.mp4", "videos/good2.mp4")
GOOD_DIRS = ("frames/full",)


def _frames(seed: int, t: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, size=(t, 48, 64, 3), dtype=np.uint8)


def _jpegs(folder: Path, n: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(_frames(i, 1)[0]).save(folder / f"img_{i + 1:05d}.jpg")


def make_bad_dataset(root: Path) -> dict[str, Path]:
    """A video list (val) and a frame-directory list (train) with the planted bad entries of EXPECTED_BAD."""
    (root / "videos").mkdir(parents=True)
    for i, rel in enumerate(GOOD_VIDEOS):
        write_mp4(root / rel, _frames(i))
    (root / "videos/empty.mp4").write_bytes(b"")
    whole = (root / GOOD_VIDEOS[0]).read_bytes()
    (root / "videos/truncated.mp4").write_bytes(whole[: len(whole) // 2])
    (root / "videos/text.mp4").write_text("this is a text file, not a video\n" * 20)
    _jpegs(root / "frames/full", 6)
    _jpegs(root / "frames/short", 3)
    (root / "classes.csv").write_text("id,name\n0,alpha\n1,beta\n2,gamma\n")
    videos = [*GOOD_VIDEOS, "videos/missing.mp4", "videos/empty.mp4", "videos/truncated.mp4", "videos/text.mp4"]
    (root / "val.txt").write_text("".join(f"{v} {i % 3}\n" for i, v in enumerate(videos)))
    (root / "train_frames.txt").write_text("frames/full 6 0\nframes/short 6 2\n")
    return {"root": root, "val": root / "val.txt", "frames": root / "train_frames.txt", "classes": root / "classes.csv"}


def _needs(ds: dict[str, Path]):
    return (dc.needs_of_args("video_list", str(ds["root"]), [f"val={ds['val']}"], str(ds["classes"]))
            + dc.needs_of_args("frame_dir", str(ds["root"]), [f"train={ds['frames']}"], str(ds["classes"])))


def _bad_by_entry(report: dc.CheckReport) -> dict[str, str]:
    return {e["video_id"]: b["reason"] for b in report.bad for e in b["entries"]}


@pytest.fixture
def dataset(tmp_path: Path) -> dict[str, Path]:
    return make_bad_dataset(tmp_path / "data")


@pytest.mark.parametrize("decode", ["none", "sample 4", "all"])
def test_every_planted_bad_file_is_found_with_its_reason_and_nothing_else(dataset, tmp_path, decode) -> None:
    report = dc.check(_needs(dataset), dc.parse_decode(decode.split()), cache_file=tmp_path / "cache.json",
                      executor="inline", tasks=2)
    assert _bad_by_entry(report) == EXPECTED_BAD
    assert report.files == len(EXPECTED_BAD) + len(GOOD_VIDEOS) + len(GOOD_DIRS)
    by_split = {s.label: s for s in report.splits}
    assert (by_split["data/val"].records, by_split["data/val"].classes) == (7, 3)
    assert (by_split["data/val"].label_min, by_split["data/val"].label_max) == (0, 2)
    assert by_split["data/train"].records == 2
    details = {os.path.relpath(b["path"], dataset["root"]): b["detail"] for b in report.bad}
    assert "3 frame(s); the list says 6" in details["frames/short"]
    assert "not a known video container" in details["videos/text.mp4"]


def test_decode_all_finds_a_stream_cut_inside_its_frames(tmp_path) -> None:
    """A faststart file (index first) cut in its frame data: only a full decode can see it."""
    from bike.data.integrity import check_video_file
    from harness.dataprepare import PrepareSettings, encode_one

    src = tmp_path / "a.mp4"
    write_mp4(src, _frames(0, 40))
    fast = tmp_path / "fast.mp4"
    assert encode_one(str(src), str(fast), PrepareSettings(short_side=48)) is None  # +faststart: the index first
    data = fast.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    problem = check_video_file(str(cut), "all")
    assert problem is not None and problem.reason == "truncated"
    assert check_video_file(str(fast), "all") is None


def test_local_processes_as_a_job_array_give_the_same_report(dataset, tmp_path) -> None:
    report = dc.check(_needs(dataset), dc.DecodeLevel("sample", 2), cache_file=tmp_path / "cache.json",
                      executor="local", tasks=2, folder=tmp_path / "jobs", poll_s=0.2)
    assert _bad_by_entry(report) == EXPECTED_BAD
    assert report.checked == report.files


def test_a_rerun_rechecks_only_changed_files(dataset, tmp_path) -> None:
    cache = tmp_path / "cache.json"
    first = dc.check(_needs(dataset), cache_file=cache, executor="inline")
    assert first.checked == first.files and first.cached == 0
    again = dc.check(_needs(dataset), cache_file=cache, executor="inline")
    assert again.checked == 1  # only the missing file (nothing to fingerprint) is looked at again
    assert _bad_by_entry(again) == EXPECTED_BAD
    # fix the truncated file, damage a good one: both are re-checked, the report follows
    write_mp4(dataset["root"] / "videos/truncated.mp4", _frames(7))
    (dataset["root"] / "videos/good1.mp4").write_bytes(b"")
    third = dc.check(_needs(dataset), cache_file=cache, executor="inline")
    assert third.checked == 3
    expected = {k: v for k, v in EXPECTED_BAD.items() if k != "videos/truncated.mp4"} | {"videos/good1.mp4": "empty"}
    assert _bad_by_entry(third) == expected
    # a deeper decode level re-checks what was clean at the shallower one
    deeper = dc.check(_needs(dataset), dc.DecodeLevel("all"), cache_file=cache, executor="inline")
    assert deeper.checked == 1 + len(GOOD_DIRS) + 3  # missing, the clean frame dir, the 3 clean videos


def test_an_interrupted_check_keeps_what_its_tasks_wrote(dataset, tmp_path) -> None:
    cache = tmp_path / "cache.json"
    summaries, targets = dc.gather(_needs(dataset))
    frag = cache.with_name(cache.name + ".d") / "dead-task.json"
    dc.CheckShard(targets[:4], dc.DecodeLevel("none"), str(frag))()  # a task whose driver was killed
    report = dc.check(_needs(dataset), cache_file=cache, executor="inline")
    assert report.cached == sum(1 for t in targets[:4] if os.path.exists(t.path))
    assert _bad_by_entry(report) == EXPECTED_BAD
    assert not list(frag.parent.glob("*.json"))


def test_cli_json_report_exclusion_list_and_exit_codes(dataset, tmp_path, capsys) -> None:
    common = ["--root", str(dataset["root"]), "--class-file", str(dataset["classes"]), "--results", str(tmp_path / "r"),
              "--executor", "debug"]
    excl = tmp_path / "exclude.txt"
    code = main(["data", "check", "--format", "video_list", "--list", f"val={dataset['val']}", "--json",
                 "--write-exclude", str(excl), *common])
    assert code == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False
    assert {os.path.relpath(b["path"], dataset["root"]): b["reason"] for b in out["bad"]} == {
        k: v for k, v in EXPECTED_BAD.items() if k.startswith("videos/")}
    assert (tmp_path / "r/cache/datacheck.json").is_file()
    entries = [ln.split()[0] for ln in excl.read_text().splitlines() if ln and not ln.startswith("#")]
    assert sorted(entries) == sorted(k for k in EXPECTED_BAD if k.startswith("videos/"))

    # the table for people
    assert main(["data", "check", "--format", "video_list", "--list", f"val={dataset['val']}", *common]) == 1
    table = capsys.readouterr().out
    assert "truncated" in table and "videos/text.mp4" in table and "data/val" in table

    # clean: only the good videos
    clean = tmp_path / "clean.txt"
    clean.write_text("".join(f"{v} 0\n" for v in GOOD_VIDEOS))
    assert main(["data", "check", "--format", "video_list", "--list", f"val={clean}", *common]) == 0
    capsys.readouterr()

    # bad input: a label outside the class file, a decode level, a missing list -> 2, no traceback
    broken = tmp_path / "broken.txt"
    broken.write_text("videos/good0.mp4 7\n")
    assert main(["data", "check", "--format", "video_list", "--list", f"val={broken}", *common]) == 2
    err = capsys.readouterr().err
    assert f"{broken}:1" in err and "label" in err and "0..2" in err and "Traceback" not in err
    assert main(["data", "check", "--format", "video_list", "--list", str(clean), "--decode", "sample", "0", *common]) == 2
    assert "--decode" in capsys.readouterr().err
    assert main(["data", "check", "--format", "video_list", "--list", str(tmp_path / "nope.txt"), *common]) == 2
    assert "nope.txt" in capsys.readouterr().err


def test_a_spec_names_the_exclusion_list_and_the_run_logs_how_many_it_excluded(dataset, tmp_path, capsys, caplog) -> None:
    from bike.config import RunConfig
    from bike.engine.datasets import split_records, training_records

    excl = tmp_path / "exclude.txt"
    report = dc.check(_needs(dataset), cache_file=None, executor="inline")
    assert dc.write_exclude_list(report, excl) == len(EXPECTED_BAD)
    data = {"dataset": "tiny", "root": str(dataset["root"]), "val_list": str(dataset["val"]),
            "train_list": str(dataset["val"]), "class_file": str(dataset["classes"]), "exclude_list": str(excl)}
    cfg = RunConfig(data=data)
    with caplog.at_level(logging.WARNING):
        records, _ = split_records(cfg, "val")
    assert sorted(r.video_id for r in records) == sorted(GOOD_VIDEOS)
    assert "excluded 4 of the 7 entries of the val list" in caplog.text
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_log = logging.getLogger(f"bike.{run_dir.name}")
    handler = logging.FileHandler(run_dir / "log.txt")
    run_log.addHandler(handler)
    try:
        training_records(cfg, run_dir)
    finally:
        run_log.removeHandler(handler)
        handler.close()
    assert "excluded 4 of the 7 entries of the train list" in (run_dir / "log.txt").read_text()

    # a spec names it explicitly; data check of that spec reports the excluded count per split
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "tiny", "family": "general",
        "dataset": {"name": "tiny", "root": str(dataset["root"]), "val_list": str(dataset["val"]),
                    "class_file": str(dataset["classes"]), "exclude_list": str(excl)},
        "variants": {"a": {"stage": "eval", "set": {"model.pretrained": None}}}}))
    code = main(["data", "check", str(spec), "--scale", "full", "--json", "--executor", "debug",
                 "--results", str(tmp_path / "r2")])
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [(s["label"], s["records"], s["excluded"]) for s in out["splits"]] == [("tiny/val", 7, 4)]
    # a missing exclusion list is bad input naming the field
    cfg2 = RunConfig(data={**data, "exclude_list": str(tmp_path / "none.txt")})
    with pytest.raises(ValueError, match="data.exclude_list"):
        split_records(cfg2, "val")


def test_a_k600_spec_checks_each_split_list_against_its_own_class_file(dataset, tmp_path, capsys) -> None:
    """A run with eval.k600_split_lists reads every split list (the released test_split{s}_exist.txt), labelled
    by its own class file: each is parsed and its videos checked like the val list."""
    root = dataset["root"]
    (root / "k160_labels_split1.csv").write_text("id,name\n0,alpha\n1,beta\n")
    (root / "k160_labels_split2.csv").write_text("id,name\n0,gamma\n1,beta\n2,delta\n3,alpha\n")
    (root / "test_split1_exist.txt").write_text("videos/good0.mp4 0\nvideos/good1.mp4 1\n")
    (root / "test_split2_exist.txt").write_text("videos/good1.mp4 1\nvideos/good2.mp4 3\nvideos/truncated.mp4 0\n")
    lists = [str(root / "test_split1_exist.txt"), str(root / "test_split2_exist.txt")]
    files = [str(root / "k160_labels_split1.csv"), str(root / "k160_labels_split2.csv")]
    body = {"name": "k600", "family": "zero-shot-half",
            "dataset": {"name": "k600", "root": str(root), "val_list": lists[0], "class_file": files[0]},
            "eval": {"protocol": "zero_shot_k600", "k600_split_lists": lists, "k600_split_files": files},
            "variants": {"a": {"stage": "eval", "set": {"model.pretrained": None}}}}
    spec = tmp_path / "k600.yaml"
    spec.write_text(yaml.safe_dump(body))
    argv = ["data", "check", str(spec), "--scale", "full", "--json", "--executor", "debug", "--results", str(tmp_path / "r")]
    assert main(argv) == 1
    out = json.loads(capsys.readouterr().out)
    assert [(s["label"], s["list_file"], s["records"], s["classes"], s["label_max"]) for s in out["splits"]] == [
        ("k600/val_k600_split1", lists[0], 2, 2, 1), ("k600/val_k600_split2", lists[1], 3, 4, 3)]
    assert [(os.path.relpath(b["path"], root), b["reason"]) for b in out["bad"]] == [("videos/truncated.mp4", "truncated")]
    assert out["bad"][0]["entries"] == [{"split": "k600/val_k600_split2", "video_id": "videos/truncated.mp4"}]

    # label 3 is a class of split 2's class file, not of split 1's (the run's own)
    (root / "test_split1_exist.txt").write_text("videos/good0.mp4 3\n")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "test_split1_exist.txt:1" in err and "label 3 is out of range" in err and "expected 0..1" in err

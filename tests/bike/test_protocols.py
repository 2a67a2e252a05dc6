import numpy as np
import pytest

from bike.data.lists import ListFormatError, VideoRecord, read_frame_dir_list, read_trimmed_list, read_video_list
from bike.protocols import (
    few_shot_select,
    full_class_split,
    half_class_splits,
    holdout_split,
    k600_splits,
    repeat_to_length,
    write_video_list,
)


def records(root, per_class=(5, 3, 4)):
    out = []
    for c, n in enumerate(per_class):
        for j in range(n):
            rel = f"c{c}/v{j}.mp4"
            out.append(VideoRecord(str(root / rel), c, rel))
    return out


def test_few_shot_select_k_per_class_seeded(tmp_path):
    recs = records(tmp_path)
    sel = few_shot_select(recs, shots=2, seed=0, num_classes=3)
    assert [r.label for r in sel] == [0, 0, 1, 1, 2, 2]
    assert len({r.video_id for r in sel}) == 6 and all(r in recs for r in sel)
    assert few_shot_select(recs, 2, 0, 3) == sel
    draws = {tuple(r.video_id for r in few_shot_select(recs, 2, s, 3)) for s in range(10)}
    assert len(draws) > 1  # the seed matters
    with pytest.raises(ValueError, match=r"K=4: 1 class\(es\) have fewer training videos \(class 1: 3\)"):
        few_shot_select(recs, 4, 0, 3)
    with pytest.raises(ValueError, match=r"class 3: 0"):
        few_shot_select(recs, 1, 0, num_classes=4)


def test_repeat_to_length_keeps_iterations_per_epoch(tmp_path):
    recs = records(tmp_path)
    sel = few_shot_select(recs, 1, 0, 3)
    rep = repeat_to_length(sel, len(recs))
    assert len(rep) == 12 and rep[:3] == sel and rep[3:6] == sel
    counts = [rep.count(r) for r in sel]
    assert max(counts) - min(counts) <= 1


def test_write_video_list_round_trips(tmp_path):
    recs = records(tmp_path / "root")
    path = write_video_list(few_shot_select(recs, 2, 1, 3), tmp_path / "out" / "fewshot.txt", tmp_path / "root")
    assert read_video_list(path, tmp_path / "root") == few_shot_select(recs, 2, 1, 3)
    frames = [VideoRecord(str(tmp_path / "d1"), 2, "d1", num_frames=30)]
    assert read_frame_dir_list(write_video_list(frames, tmp_path / "f.txt", tmp_path), tmp_path) == frames
    trimmed = [VideoRecord(str(tmp_path / "a.mp4"), 1, "a.mp4#t=1.5,3.25", start=1.5, end=3.25)]
    back = read_trimmed_list(write_video_list(trimmed, tmp_path / "t.txt", tmp_path), tmp_path)
    assert (back[0].path, back[0].label, back[0].start, back[0].end) == (trimmed[0].path, 1, 1.5, 3.25)
    with pytest.raises(ValueError, match="mix list formats"):
        write_video_list(frames + recs[:1], tmp_path / "x.txt", tmp_path)


def test_half_class_splits_match_legacy_seeding_without_touching_global_rng():
    np.random.seed(1234)
    state = np.random.get_state()
    splits = half_class_splits(101, 10)
    after = np.random.get_state()
    assert after[0] == state[0] and np.array_equal(after[1], state[1]) and after[2:] == state[2:]
    for s, split in enumerate(splits):
        np.random.seed(s)  # what the official code does
        assert np.array_equal(split, np.sort(np.random.permutation(101)[: 101 // 2]))
        assert len(split) == 50 and np.all(np.diff(split) > 0)
    assert len({tuple(s) for s in splits}) == 10
    assert [len(s) for s in half_class_splits(51, 3)] == [25, 25, 25]
    np.testing.assert_array_equal(full_class_split(4), [0, 1, 2, 3])


def test_k600_splits_from_names_or_indices(tmp_path):
    names = ["abseiling", "Zumba", "juggling", "surfing"]
    (tmp_path / "s1.txt").write_text("zumba\nabseiling\n")
    (tmp_path / "s2.txt").write_text("3\n2\n")
    out = k600_splits([tmp_path / "s1.txt", tmp_path / "s2.txt"], names, split_size=2)
    assert [s.tolist() for s in out] == [[0, 1], [2, 3]]
    (tmp_path / "bad.txt").write_text("abseiling\nrunning\n")
    with pytest.raises(ListFormatError, match=r"bad.txt:2: class 'running' is not in the class file"):
        k600_splits([tmp_path / "bad.txt"], names)
    with pytest.raises(ListFormatError, match=r"s1.txt: 2 classes; expected 160"):
        k600_splits([tmp_path / "s1.txt"], names, split_size=160)
    (tmp_path / "dup.txt").write_text("1\nZumba\n")
    with pytest.raises(ListFormatError, match=r"dup.txt:2: class 'Zumba' repeats line 1"):
        k600_splits([tmp_path / "dup.txt"], names)


def test_holdout_split_is_stratified_and_disjoint(tmp_path):
    recs = records(tmp_path, per_class=(10, 20, 30))
    kept, held = holdout_split(recs, 0.1, seed=0)
    assert [sum(r.label == c for r in held) for c in range(3)] == [1, 2, 3]
    assert len(kept) + len(held) == 60 and not set(r.video_id for r in kept) & set(r.video_id for r in held)
    assert holdout_split(recs, 0.1, seed=0) == (kept, held)


def test_k600_splits_read_the_released_csv_with_its_header(tmp_path):
    """The released k160_labels_split{1,2,3}.csv: an ``id,name`` header, then ``<id in the split>,<K600 name>``."""
    k600 = ["abseiling", "acting in play", "adjusting glasses", "arguing", "zumba"]
    (tmp_path / "k160_labels_split1.csv").write_text("id,name\n0,acting in play\n1,adjusting glasses\n2,arguing\n")
    (split,) = k600_splits([tmp_path / "k160_labels_split1.csv"], k600, split_size=3)
    assert split.tolist() == [1, 2, 3]
    (tmp_path / "bad.csv").write_text("id,name\n0,acting in play\n1,not a k600 class\n")
    with pytest.raises(Exception, match=r"bad\.csv:3: class 'not a k600 class' is not in the class file"):
        k600_splits([tmp_path / "bad.csv"], k600)


def test_k600_split_configs_evaluate_each_released_list_against_its_own_class_file():
    from bike.config import RunConfig
    from bike.protocols import k600_split_configs

    lists = [f"/d/k600/test_split{s}_exist.txt" for s in (1, 2, 3)]
    files = [f"/d/k600/k160_labels_split{s}.csv" for s in (1, 2, 3)]
    cfg = RunConfig.model_validate({
        "data": {"dataset": "k600", "val_root": "/d/k600/k600_test_video", "val_list": lists[0], "class_file": files[0],
                 "expected_lines": {"val": 14119, "classes": 160}, "exclude_list": "/d/bad.txt"},
        "eval": {"protocol": "zero_shot_k600", "zero_shot_path": "frame", "k600_split_lists": lists,
                 "k600_split_files": files}})
    splits = k600_split_configs(cfg)
    assert [(c.data.val_list, c.data.class_file) for c in splits] == list(zip(lists, files))
    # split 1's files are the run's own: their counts stay; the other lists and class files are not counted
    assert [c.data.expected_lines for c in splits] == [{"val": 14119, "classes": 160}, {}, {}]
    for c in splits:
        assert (c.eval.protocol, c.eval.zero_shot_path, c.eval.k600_split_lists, c.eval.k600_split_files) == (
            "zero_shot_full", "frame", None, [])
        assert c.data.root_for("val") == "/d/k600/k600_test_video" and c.data.exclude_list == "/d/bad.txt"
        assert c.model == cfg.model and c.eval.zero_shot_ties == cfg.eval.zero_shot_ties
    assert len({c.content_hash() for c in splits}) == 3
    assert k600_split_configs(RunConfig()) == []
    with pytest.raises(ValueError, match="eval.split 'tune'"):
        RunConfig.model_validate({"eval": {"protocol": "zero_shot_k600", "split": "tune", "k600_split_lists": lists,
                                           "k600_split_files": files}})

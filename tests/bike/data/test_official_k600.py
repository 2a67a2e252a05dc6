"""The released Kinetics-600 zero-shot files (excerpts in tests/data/official_lists/) as the shipped spec reads them.

Facts from the released code (github.com/whwu95/BIKE, configs/k600/k600_zero_shot_split{1,2,3}.yaml): split s is
its own evaluation, ``val_list: lists/k600/test_split{s}_exist.txt`` against ``label_list:
lists/k600/k160_labels_split{s}.csv`` (``num_classes: 160``), videos under ``val_root: .../k600_test_video``; a list
line is ``x.strip().split(' ')``, path = field 0, label = field -1 (an index into that split's class file).
"""

import os
from pathlib import Path

import pytest

from bike.data.lists import ListFormatError, read_class_csv, read_dataset, read_video_list
from bike.protocols import k600_split_configs
from tests.bike.data.test_official_lists import EXCERPTS, bike_data, full_config, readme_entries  # noqa: F401

LISTS = [f"test_split{s}_exist.txt" for s in (1, 2, 3)]
CLASS_FILES = [f"k160_labels_split{s}.csv" for s in (1, 2, 3)]


def test_the_excerpts_parse_as_split_lists_labelled_by_their_own_class_file():
    """Each released list excerpt is a video list whose labels index its own split's class file excerpt."""
    for lst, classes in zip(LISTS, CLASS_FILES):
        names = read_class_csv(EXCERPTS / f"k600__{classes}")
        rows = [line.split(",", 1) for line in (EXCERPTS / f"k600__{classes}").read_text().splitlines()[1:]]
        assert names == [name for _, name in rows] and [int(i) for i, _ in rows] == list(range(len(rows)))
        records = read_video_list(EXCERPTS / f"k600__{lst}", "/videos", num_classes=len(names))
        lines = [x.strip().split(" ") for x in open(EXCERPTS / f"k600__{lst}")]
        assert len(records) == len(lines) > 0
        for rec, fields in zip(records, lines):
            assert rec.video_id == fields[0] and rec.path == os.path.join("/videos", fields[0])
            assert rec.label == int(fields[-1]) and 0 <= rec.label < len(names)
    # the splits are different files: other classes, lists of other lengths (the README's whole-file counts)
    assert len({(EXCERPTS / f"k600__{c}").read_text() for c in CLASS_FILES}) == 3
    assert [readme_entries()[f"k600/{x}"] for x in LISTS] == [14119, 14067, 14161]


def test_shipped_spec_names_only_the_released_k600_files():
    cfg = full_config("zero_shot_half.yaml", "k600", Path("/bike_data"))
    assert cfg.eval.protocol == "zero_shot_k600"
    assert [Path(p).name for p in cfg.eval.k600_split_lists] == LISTS
    assert [Path(p).name for p in cfg.eval.k600_split_files] == CLASS_FILES
    assert (Path(cfg.data.val_list).name, Path(cfg.data.class_file).name) == (LISTS[0], CLASS_FILES[0])
    assert cfg.data.root_for("val") == "/bike_data/k600/k600_test_video" and cfg.data.format == "video_list"
    released = {name for name in readme_entries() if name.startswith("k600/")}
    named = {"/".join(Path(p).parts[-2:]) for p in (*cfg.eval.k600_split_lists, *cfg.eval.k600_split_files,
                                                     cfg.data.val_list, cfg.data.class_file)}
    assert named == released and len(named) == 6
    assert cfg.data.expected_lines == {"val": readme_entries()["k600/test_split1_exist.txt"],
                                       "classes": readme_entries()["k600/k160_labels_split1.csv"]}


def test_shipped_spec_reads_each_released_split(bike_data):  # noqa: F811 - the fixture
    """At full scale, split s of the shipped spec reads test_split{s}_exist.txt from $BIKE_DATA/k600 against
    k160_labels_split{s}.csv (completed to its 160 classes): the released paths, labels and class names."""
    cfg = full_config("zero_shot_half.yaml", "k600", bike_data)
    # split 1's count is the whole released file's: the 12-line excerpt is a clear error
    with pytest.raises(ListFormatError, match=r"test_split1_exist.txt: 12 entry lines; expected 14119"):
        read_dataset(cfg.data, "val")
    splits = k600_split_configs(cfg)
    assert len(splits) == 3
    for s, split_cfg in enumerate(splits):
        data = split_cfg.data
        assert (Path(data.val_list).name, Path(data.class_file).name) == (LISTS[s], CLASS_FILES[s])
        excerpt = data.model_copy(update={"expected_lines": {"classes": 160}})
        records, names = read_dataset(excerpt, "val")
        assert len(names) == 160
        released = [line.split(",", 1)[1] for line in (EXCERPTS / f"k600__{CLASS_FILES[s]}").read_text().splitlines()[1:]]
        assert names[: len(released)] == released
        lines = [x.strip().split(" ") for x in open(EXCERPTS / f"k600__{LISTS[s]}")]
        assert [(r.path, r.label) for r in records] == [
            (os.path.join(str(bike_data), "k600", "k600_test_video", f[0]), int(f[-1])) for f in lines]

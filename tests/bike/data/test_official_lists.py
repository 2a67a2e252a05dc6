"""The authors' released list files (excerpts in tests/data/official_lists/) read as the shipped specs declare.

Facts from the released code (github.com/whwu95/BIKE, datasets/video.py and datasets/charades.py):
* every list line is ``x.strip().split(' ')``: path = field 0, label = field -1, frame count = field 1;
  the file opened is ``os.path.join(root_path, record.path)`` (a frame folder, or a video);
* Charades: the train CSV's rows with ``float(end) > float(start)`` are instances of ``<root>/<video_id>``;
  the test CSV's ``actions`` column (index 9) gives the 157-class multi-hot target of ``<root>/<id>``.
"""

import csv
import os
import shutil
from pathlib import Path

import pytest

from bike.data.lists import ListFormatError, read_charades_train, read_classes, read_dataset, read_frame_dir_list
from harness.spec import load_spec, resolve_config

REPO = Path(__file__).resolve().parents[3]
EXCERPTS = REPO / "tests" / "data" / "official_lists"
EXPERIMENTS = REPO / "experiments"
CSV_LISTS = ("Charades_train_split_label.csv", "Charades_v1_test.csv")

# (spec, variant, splits): every shipped variant that reads a released list at full scale.
CASES = [
    ("k400_vitl14.yaml", "video", ("val",)),
    ("k400_vitl14.yaml", "video_f16", ("val",)),
    ("charades.yaml", "video", ("train", "val")),
    ("few_shot.yaml", "hmdb51_1shot", ("train", "val")),
    ("few_shot.yaml", "ucf101_1shot", ("train", "val")),
    ("few_shot.yaml", "anet_1shot", ("train", "val")),
    ("few_shot.yaml", "k400_1shot", ("val",)),
    ("zero_shot_full.yaml", "ucf101", ("val",)),
    ("zero_shot_full.yaml", "hmdb51", ("val",)),
    ("zero_shot_full.yaml", "anet", ("val",)),
    ("zero_shot_half.yaml", "ucf101", ("val",)),
    ("zero_shot_half.yaml", "hmdb51", ("val",)),
    ("zero_shot_half.yaml", "anet", ("val",)),
]


def readme_entries():
    """``<dataset>/<file>`` -> entries of the whole released file (the README table's last column)."""
    table = {}
    for line in (EXCERPTS / "README.md").read_text().splitlines():
        parts = [p.strip() for p in line.strip("|").split("|")]
        if len(parts) == 3 and parts[2].isdigit():
            table[parts[0]] = int(parts[2])
    return table


CLASS_FILES = ("Charades_v1_classes.txt",)


@pytest.fixture()
def bike_data(tmp_path):
    """$BIKE_DATA laid out as the README says: <dataset>/<released file name>. Class files are completed
    to their whole length with placeholder names after the released first lines, so that labels are
    checked against the released class count."""
    entries = readme_entries()
    for f in EXCERPTS.iterdir():
        if "__" in f.name:
            dataset, name = f.name.split("__", 1)
            (tmp_path / dataset).mkdir(exist_ok=True)
            target = tmp_path / dataset / name
            shutil.copy(f, target)
            if name in CLASS_FILES:
                have = len(f.read_text().splitlines())
                with open(target, "a") as out:
                    out.writelines(f"c{i:03d} placeholder {i}\n" for i in range(have, entries[f"{dataset}/{name}"]))
            elif name.endswith(".csv") and f.read_text().startswith("id,name"):
                have = len(f.read_text().splitlines()) - 1
                text = f.read_text()
                with open(target, "a") as out:
                    out.write("" if text.endswith("\n") else "\n")
                    out.writelines(f"{i},placeholder {i}\n" for i in range(have, entries[f"{dataset}/{name}"]))
    return tmp_path


def full_config(spec_file, variant, data_root):
    spec = load_spec(EXPERIMENTS / spec_file, env={"BIKE_DATA": str(data_root)})
    return resolve_config(spec, variant, "full", init_from=str(data_root / "init.pt"))


def released_lines(path):
    """Entry lines as the released code reads them (header rows aside)."""
    if path.name in CSV_LISTS:
        with open(path, newline="") as handle:
            return list(csv.reader(handle))[1:]
    return [x.strip().split(" ") for x in open(path)]


def excerpt_entries(path):
    return len(released_lines(path))


@pytest.mark.parametrize("spec_file, variant, splits", CASES)
def test_shipped_spec_reads_the_released_files(bike_data, spec_file, variant, splits):
    cfg = full_config(spec_file, variant, bike_data)
    data = cfg.data
    assert data.expected_lines, "the shipped spec declares the released files' counts"
    # the spec's counts are the whole files': the 12-line excerpts are a clear error
    split = splits[0]
    list_file = getattr(data, f"{split}_list")
    with pytest.raises(ListFormatError) as err:
        read_dataset(data, split)
    msg = str(err.value)
    assert list_file in msg or data.class_file in msg
    assert "expected" in msg and "data.expected_lines." in msg

    # with the counts of the excerpts, every line is one record
    counts = {s: excerpt_entries(Path(getattr(data, f"{s}_list"))) for s in splits}
    excerpt = data.model_copy(update={"expected_lines": {**counts}})
    for s in splits:
        path = Path(getattr(data, f"{s}_list"))
        assert path.parent.parent == bike_data and path.parent.name in ("k400", "charades", "hmdb51", "ucf101", "anet")
        records, names = read_dataset(excerpt, s)
        lines = released_lines(path)
        assert len(records) == len(lines) == counts[s]
        root = data.root_for(s)
        for rec, fields in zip(records, lines):
            if data.format == "charades":
                vid = fields[0]
                assert rec.path == os.path.normpath(os.path.join(root, vid + ".mp4"))
                if s == "train":
                    assert rec.label == int(fields[1][1:]) and (rec.start, rec.end) == (float(fields[2]), float(fields[3]))
                else:
                    target = {int(a.split(" ")[0][1:]) for a in fields[9].split(";")} if fields[9] != "" else set()
                    assert set(rec.label) == target
            else:
                # what the released code opens: os.path.join(root_path, path), label = last field
                opened = os.path.join(root, fields[0])
                assert rec.path == os.path.normpath(opened) and os.path.isabs(rec.path)
                assert rec.video_id == fields[0]
                assert rec.label == int(fields[-1])
                if len(fields) == 3:
                    assert rec.num_frames == (int(fields[1]) or None)
            labels = rec.label if isinstance(rec.label, tuple) else (rec.label,)
            assert all(0 <= v < len(names) for v in labels)


def test_expected_counts_of_the_shipped_specs_are_the_released_files(bike_data):
    """The counts in the specs are the README table's entries column (whole files, header rows aside)."""
    table = readme_entries()
    for spec_file, variant, splits in CASES:
        data = full_config(spec_file, variant, bike_data).data
        for key, n in data.expected_lines.items():
            path = data.class_file if key == "classes" else getattr(data, f"{key}_list")
            assert table["/".join(Path(path).parts[-2:])] == n, (spec_file, variant, key)


def test_class_files_parse_with_their_ids(bike_data):
    for spec_file, variant, _ in CASES:
        data = full_config(spec_file, variant, bike_data).data
        names = read_classes(data)  # the completed file has the declared count
        assert len(names) == data.expected_lines["classes"]
        excerpt = next(f for f in EXCERPTS.iterdir() if f.name.endswith("__" + Path(data.class_file).name))
        if data.format == "charades":
            released = [line.strip("\n").split(" ", 1) for line in open(excerpt)]  # datasets/charades.py `classes`
            assert names[: len(released)] == [r[1] for r in released]
        else:
            rows = list(csv.reader(open(excerpt)))  # pd.read_csv(labels_file).values
            assert rows[0] == ["id", "name"] and names[: len(rows) - 1] == [r[1] for r in rows[1:]]
        bad = data.model_copy(update={"expected_lines": {"classes": len(names) + 1}})
        with pytest.raises(ListFormatError, match=rf"{len(names)} classes; expected {len(names) + 1} \(data.expected_lines.classes\)"):
            read_classes(bad)


def test_anet_zero_shot_double_slash_is_the_released_folder(bike_data):
    data = full_config("zero_shot_full.yaml", "anet", bike_data).data
    recs = read_frame_dir_list(data.val_list, data.root, 200)
    entry = "activitynet_train_resize_img_256_340_fps1//u2uoYvo8J5s"
    rec = next(r for r in recs if r.video_id == entry)
    assert rec.path == os.path.join(data.root, "activitynet_train_resize_img_256_340_fps1", "u2uoYvo8J5s")
    assert os.path.samefile(Path(data.root), Path(data.root)) and "//" not in rec.path


def test_frame_count_zero_means_count_the_folder(tmp_path):
    """16 lines of the released hmdb_full_for_zeroshot.txt list 0 frames; the released code counts the folder."""
    lst = tmp_path / "l.txt"
    lst.write_text("brush_hair/Brushing_Her_Hair__[_NEW_AUDIO_]_UPDATED!!!!_brush_hair_h_cm_np1_le_goo_1 0 0\n")
    (rec,) = read_frame_dir_list(lst, tmp_path, 51)
    assert rec.num_frames is None and rec.label == 0


def test_charades_rows_ending_before_they_start_are_dropped(tmp_path, caplog):
    """The released reader keeps rows with float(end) > float(start); 7 rows of the released file do not."""
    f = tmp_path / "Charades_train_split_label.csv"
    f.write_text(
        "video_id,label,start_time,end_time,total_time\r\n"
        "00SL4,c071,18.00,10.00,8.96\r\n"
        "46GP8,c092,11.90,21.20,24.83\r\n"
        "LEOL6,c107,8.00,7.00,6.25\r\n"
    )
    recs = read_charades_train(f, tmp_path)
    assert [(r.video_id.split("#")[0], r.label) for r in recs] == [("46GP8.mp4", 92)]
    assert "2 instance row(s)" in caplog.text and "[2, 4]" in caplog.text


def test_train_and_val_roots(bike_data):
    data = full_config("few_shot.yaml", "anet_1shot", bike_data).data
    assert data.root_for("train").endswith("anet/anet_instance_frames_v1.3_train_vids_fps1")
    assert data.root_for("val").endswith("anet/activitynet_val_resize_img_256_340_fps1")
    assert data.format == "activitynet"
    tr, _ = read_dataset(data.model_copy(update={"expected_lines": {}}), "train")
    assert tr[0].path == os.path.join(data.root_for("train"), "4k-F7EXpcrM_0") and tr[0].num_frames == 12

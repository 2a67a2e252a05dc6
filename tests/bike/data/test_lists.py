import os

import pytest

from bike.config import DataConfig
from bike.data.lists import (
    ListFormatError,
    VideoRecord,
    read_activitynet_train,
    read_charades_classes,
    read_charades_test,
    read_charades_train,
    read_class_csv,
    read_dataset,
    read_frame_dir_list,
    read_video_list,
)


def write(path, text):
    path.write_text(text)
    return path


def test_video_list_records_are_absolute_and_keyed_by_entry(tmp_path):
    lst = write(tmp_path / "train.txt", "# comment\nabseiling/a.mp4 0\n\nzumba/b.mp4   2\n")
    recs = read_video_list(lst, tmp_path / "videos", num_classes=3)
    assert recs == [
        VideoRecord(os.path.join(tmp_path, "videos", "abseiling/a.mp4"), 0, "abseiling/a.mp4"),
        VideoRecord(os.path.join(tmp_path, "videos", "zumba/b.mp4"), 2, "zumba/b.mp4"),
    ]
    assert all(os.path.isabs(r.path) and r.num_frames is None and r.start is None for r in recs)


def test_video_list_multi_label_field(tmp_path):
    lst = write(tmp_path / "l.txt", "a.mp4 3,1,3\n")
    assert read_video_list(lst, tmp_path, 5, multi_label=True)[0].label == (1, 3)
    with pytest.raises(ListFormatError, match=r"l.txt:1: field 'label'.*multi_label"):
        read_video_list(lst, tmp_path, 5)


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("a.mp4\n", r"l.txt:1: got 1 field\(s\).*expected 2: <relative_path> <label>"),
        ("a.mp4 0\nb.mp4 x\n", r"l.txt:2: field 'label': got 'x'; expected an integer"),
        ("a.mp4 0\nb.mp4 -1\n", r"l.txt:2: field 'label': got -1; expected an integer >= 0"),
        ("a.mp4 3\n", r"l.txt:1: field 'label': label 3 is out of range; expected 0..2"),
        ("a.mp4 0\na.mp4 1\n", r"l.txt:2: entry 'a.mp4' duplicates line 1"),
    ],
)
def test_video_list_errors_name_file_line_field(tmp_path, text, pattern):
    lst = write(tmp_path / "l.txt", text)
    with pytest.raises(ListFormatError, match=pattern):
        read_video_list(lst, tmp_path, num_classes=3)


def test_missing_list_file(tmp_path):
    with pytest.raises(ListFormatError, match="nope.txt: list file not found"):
        read_video_list(tmp_path / "nope.txt", tmp_path)


def test_frame_dir_list(tmp_path):
    lst = write(tmp_path / "f.txt", "v1 40 1\nsub/v2 8 0\n")
    recs = read_frame_dir_list(lst, tmp_path, num_classes=2)
    assert [(r.video_id, r.num_frames, r.label) for r in recs] == [("v1", 40, 1), ("sub/v2", 8, 0)]
    assert recs[1].path == os.path.join(tmp_path, "sub/v2")
    assert read_frame_dir_list(write(tmp_path / "z.txt", "v1 0 1\n"), tmp_path)[0].num_frames is None  # count the folder
    bad = write(tmp_path / "g.txt", "v1 -1 1\n")
    with pytest.raises(ListFormatError, match=r"g.txt:1: field 'num_frames': got -1; expected an integer >= 0"):
        read_frame_dir_list(bad, tmp_path)
    bad = write(tmp_path / "h.txt", "v1 1\n")
    with pytest.raises(ListFormatError, match=r"h.txt:1: .*expected 3: <relative_dir> <num_frames> <label>"):
        read_frame_dir_list(bad, tmp_path)


def test_class_csv(tmp_path):
    assert read_class_csv(write(tmp_path / "c.csv", 'id,name\n0,ApplyEyeMakeup\n1,"a, b"\n')) == ["ApplyEyeMakeup", "a, b"]
    with pytest.raises(ListFormatError, match=r"c2.csv:3: field 'id': got 2; expected 1"):
        read_class_csv(write(tmp_path / "c2.csv", "id,name\n0,a\n2,b\n"))
    with pytest.raises(ListFormatError, match=r"c3.csv:1: header: got 'name,id'; expected 'id,name'"):
        read_class_csv(write(tmp_path / "c3.csv", "name,id\na,0\n"))
    with pytest.raises(ListFormatError, match=r"c4.csv:2: field 'name': empty"):
        read_class_csv(write(tmp_path / "c4.csv", "id,name\n0,\n"))


def test_charades_classes(tmp_path):
    f = write(tmp_path / "Charades_v1_classes.txt", "c000 Holding some clothes\nc001 Putting clothes somewhere\n")
    assert read_charades_classes(f) == ["Holding some clothes", "Putting clothes somewhere"]
    with pytest.raises(ListFormatError, match=r"bad.txt:2: field 'class_id': got 'c005'; expected c001"):
        read_charades_classes(write(tmp_path / "bad.txt", "c000 a\nc005 b\n"))


def test_charades_train_one_record_per_instance(tmp_path):
    f = write(
        tmp_path / "train.csv",
        "video_id,label,start_time,end_time,total_time\n"
        "46GP8,c092,11.9,21.2,24.8\n"
        "46GP8,147,0.0,12.6,24.8\n"
        "46GP8,147,0.0,12.6,24.8\n",  # the same instance twice: one sample
    )
    recs = read_charades_train(f, tmp_path / "Charades_v1_480")
    assert [(r.label, r.start, r.end) for r in recs] == [(92, 11.9, 21.2), (147, 0.0, 12.6)]
    assert recs[0].path == os.path.join(tmp_path, "Charades_v1_480", "46GP8.mp4")
    assert len({r.video_id for r in recs}) == 2 and recs[0].video_id.startswith("46GP8.mp4#t=11.9,21.2")
    bad = write(tmp_path / "bad.csv", "video_id,label,start_time,end_time,total_time\nX,c157,1,2,3\n")
    with pytest.raises(ListFormatError, match=r"bad.csv:2: field 'label': label 157 is out of range; expected 0..156"):
        read_charades_train(bad, tmp_path)
    dropped = write(tmp_path / "bad2.csv", "video_id,label,start_time,end_time,total_time\nX,c001,5,2,9\nY,c001,1,2,9\n")
    assert [r.video_id.split("#")[0] for r in read_charades_train(dropped, tmp_path)] == ["Y.mp4"]  # as released
    bad = write(tmp_path / "bad4.csv", "video_id,label,start_time,end_time,total_time\nX,c001,x,2,9\n")
    with pytest.raises(ListFormatError, match=r"bad4.csv:2: field 'start_time': got 'x'; expected a non-negative number"):
        read_charades_train(bad, tmp_path)
    bad = write(tmp_path / "bad3.csv", "video,label\nX,c001\n")
    with pytest.raises(ListFormatError, match=r"bad3.csv:1: header: missing column\(s\) \['video_id'"):
        read_charades_train(bad, tmp_path)


def test_charades_test_multi_hot(tmp_path):
    f = write(
        tmp_path / "Charades_v1_test.csv",
        "id,subject,scene,actions,length\n"
        'YSKX3,HR43,Kitchen,"c077 12.10 18.00;c079 11.80 17.30;c077 1.0 2.0",33.67\n'
        "Z0000,HR43,Kitchen,,10.0\n",
    )
    recs = read_charades_test(f, tmp_path)
    assert [(r.video_id, r.label) for r in recs] == [("YSKX3.mp4", (77, 79)), ("Z0000.mp4", ())]
    bad = write(tmp_path / "b.csv", 'id,actions\nA,"c001 1.0"\n')
    with pytest.raises(ListFormatError, match=r"b.csv:2: field 'actions': got 'c001 1.0'; expected '<cNNN> <start> <end>'"):
        read_charades_test(bad, tmp_path)


def test_activitynet_trimmed_list(tmp_path):
    f = write(tmp_path / "anet_train.txt", "v_a.mp4 3 1.5 9.25\nv_a.mp4 4 10 20\n")
    recs = read_activitynet_train(f, tmp_path, num_classes=5)
    assert [(r.label, r.start, r.end, r.video_id) for r in recs] == [
        (3, 1.5, 9.25, "v_a.mp4#t=1.5,9.25"),
        (4, 10.0, 20.0, "v_a.mp4#t=10,20"),
    ]
    bad = write(tmp_path / "b.txt", "v.mp4 1 x 3\n")
    with pytest.raises(ListFormatError, match=r"b.txt:1: field 'start_s': got 'x'; expected a non-negative number"):
        read_activitynet_train(bad, tmp_path)


def test_read_dataset_dispatches_on_format(tmp_path):
    classes = write(tmp_path / "classes.csv", "id,name\n0,a\n1,b\n")
    write(tmp_path / "train.txt", "x.mp4 0 0.5 2.0\n")
    write(tmp_path / "val.txt", "y.mp4 1\n")
    cfg = DataConfig(
        format="activitynet", root=str(tmp_path), train_list=str(tmp_path / "train.txt"),
        val_list=str(tmp_path / "val.txt"), class_file=str(classes),
    )
    train, names = read_dataset(cfg, "train")
    val, _ = read_dataset(cfg, "val")
    assert names == ["a", "b"] and train[0].start == 0.5 and val[0].start is None and val[0].label == 1
    with pytest.raises(ListFormatError, match=r"data.test_list is not set"):
        read_dataset(cfg, "test")

    write(tmp_path / "frames.txt", "d 10 1\n")
    fcfg = DataConfig(format="frame_dir", root=str(tmp_path), val_list=str(tmp_path / "frames.txt"), class_file=str(classes))
    assert read_dataset(fcfg, "val")[0][0].num_frames == 10

    write(tmp_path / "oob.txt", "y.mp4 2\n")
    vcfg = DataConfig(format="video_list", root=str(tmp_path), val_list=str(tmp_path / "oob.txt"), class_file=str(classes))
    with pytest.raises(ListFormatError, match="oob.txt:1: field 'label': label 2 is out of range; expected 0..1"):
        read_dataset(vcfg, "val")

    ch_classes = write(tmp_path / "ch.txt", "c000 a\nc001 b\nc002 c\n")
    write(tmp_path / "ch_train.csv", "video_id,label,start_time,end_time,total_time\nV,c002,1,2,3\n")
    write(tmp_path / "ch_test.csv", 'id,actions\nV,"c000 1 2;c002 2 3"\n')
    ccfg = DataConfig(
        format="charades", root=str(tmp_path), train_list=str(tmp_path / "ch_train.csv"),
        test_list=str(tmp_path / "ch_test.csv"), class_file=str(ch_classes), multi_label=True,
    )
    tr, names = read_dataset(ccfg, "train")
    te, _ = read_dataset(ccfg, "test")
    assert names == ["a", "b", "c"] and tr[0].label == 2 and te[0].label == (0, 2)

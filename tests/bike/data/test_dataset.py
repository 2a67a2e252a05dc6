import numpy as np
import pytest
import torch
from PIL import Image

from bike.config import RunConfig
from bike.data import dataset as dataset_mod
from bike.data.dataset import BadDataError, BadItem, BadVideoLog, VideoDataset, VideoItem, find_bad_videos
from bike.data.lists import VideoRecord
from bike.data.sampling import tsn_test_indices
from bike.data.transforms import CLIP_MEAN, CLIP_STD
from bike.data.video_io import write_mp4

N_FRAMES, H, W, STEP = 20, 32, 64, 10


def video_frames(offset, n=N_FRAMES):
    """Frame t of video `offset` is uniformly (offset + t) * STEP: decoded pixels name the frame."""
    vals = (offset + np.arange(n)) * STEP
    assert vals.max() <= 255
    return np.broadcast_to(vals[:, None, None, None], (n, H, W, 3)).astype(np.uint8)


def pixel_index(clip, offset):
    """Frame indices back from a normalised clip [T,3,S,S] (channel 0, any pixel)."""
    v = clip[:, 0, 0, 0] * CLIP_STD[0] + CLIP_MEAN[0]
    return np.round(v.numpy() * 255 / STEP).astype(int) - offset


def cfg(**data):
    return RunConfig(
        model={"frames": 4, "resolution": 32},
        train={"short_side": 32},
        data={"bad_video_threshold": 0.2, **data},
    )


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    d = tmp_path_factory.mktemp("ds")
    recs = []
    for i in range(4):
        path = write_mp4(d / f"v{i}.mp4", video_frames(i), fps=10, lossless=True)
        recs.append(VideoRecord(str(path), i % 2, f"v{i}.mp4"))
    return d, recs


def bad_records(d):
    (d / "zero.mp4").write_bytes(b"")
    (d / "junk.mp4").write_bytes(b"\x00not a video" * 50)
    frames_dir = d / "short_dir"
    frames_dir.mkdir(exist_ok=True)
    for t in range(3):
        Image.fromarray(video_frames(0, 3)[t]).save(frames_dir / f"img_{t + 1:05d}.jpg")
    good_bytes = (d / "v0.mp4").read_bytes()
    (d / "cut.mp4").write_bytes(good_bytes[: len(good_bytes) // 3])
    return [
        VideoRecord(str(d / "missing.mp4"), 0, "missing.mp4"),
        VideoRecord(str(d / "zero.mp4"), 0, "zero.mp4"),
        VideoRecord(str(d / "junk.mp4"), 1, "junk.mp4"),
        VideoRecord(str(frames_dir), 1, "short_dir", num_frames=10),
        VideoRecord(str(d / "cut.mp4"), 1, "cut.mp4"),
    ]


def test_eval_item_holds_exactly_the_sampled_frames(good):
    _, recs = good
    ds = VideoDataset(recs, cfg(), train=False)
    assert len(ds) == 4 and ds.num_views == 1
    for i in range(4):
        item = ds[i]
        clip, label, vid, view = item
        assert isinstance(item, VideoItem) and clip.shape == (4, 3, 32, 32)
        assert (label, vid, view) == (i % 2, f"v{i}.mp4", 0)
        np.testing.assert_array_equal(pixel_index(clip, i), tsn_test_indices(N_FRAMES, 4, "first"))


def test_centre_mode_comes_from_config(good):
    _, recs = good
    ds = VideoDataset(recs[:1], RunConfig(profile="paper", model={"frames": 4, "resolution": 32}, train={"short_side": 32}), train=False)
    np.testing.assert_array_equal(pixel_index(ds[0].clip, 0), tsn_test_indices(N_FRAMES, 4, "centre"))


def test_multi_view_items_one_per_video_and_view(good, monkeypatch):
    _, recs = good
    calls = []
    real = dataset_mod.sample_and_decode
    monkeypatch.setattr(dataset_mod, "sample_and_decode", lambda *a, **k: calls.append(a[0].video_id) or real(*a, **k))
    ds = VideoDataset(recs, cfg(), train=False, views=(2, 3))
    assert len(ds) == 4 * 6
    items = [ds[i] for i in range(len(ds))]
    assert [it.view for it in items[:6]] == list(range(6)) and {it.video_id for it in items[:6]} == {"v0.mp4"}
    for it in items[6:12]:
        clip_index = it.view // 3
        expected = tsn_test_indices(N_FRAMES, 4, clip=clip_index, clips=2)
        np.testing.assert_array_equal(pixel_index(it.clip, 1), expected)
    assert calls == ["v0.mp4", "v1.mp4", "v2.mp4", "v3.mp4"]  # one decode per video, shared by its views


def test_train_items_are_random_tsn_clips(good):
    _, recs = good
    ds = VideoDataset(recs, cfg(), train=True)
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        clip, label, vid, view = ds[2]
        assert clip.shape == (4, 3, 32, 32) and (label, view) == (0, 0)
        seen.add(tuple(np.round(clip[:, 0].mean(dim=(1, 2)).numpy(), 3)))
    assert len(seen) > 1  # different frames / augmentations per draw
    with pytest.raises(ValueError, match="one view per video"):
        VideoDataset(recs, cfg(), train=True, views=(4, 3))


def test_multi_label_items_are_multi_hot(good):
    _, recs = good
    ml = [VideoRecord(r.path, (0, 3), r.video_id) for r in recs[:2]]
    ds = VideoDataset(ml, cfg(), train=False, num_classes=5)
    torch.testing.assert_close(ds[0].label, torch.tensor([1.0, 0, 0, 1.0, 0]))
    with pytest.raises(ValueError, match="num_classes"):
        VideoDataset(ml, cfg(), train=False)


def test_each_kind_of_bad_video_becomes_a_bad_item(good):
    d, recs = good
    bads = bad_records(d)
    ds = VideoDataset(bads, cfg(), train=True)
    items = [ds[i] for i in range(len(ds))]
    assert all(isinstance(it, BadItem) for it in items)
    reasons = {it.video_id: it.reason for it in items}
    assert reasons["missing.mp4"] == "file not found"
    assert reasons["zero.mp4"] == "zero-length file"
    assert "cannot be opened" in reasons["junk.mp4"] and "cannot be opened" in reasons["cut.mp4"]
    assert "fewer than the 10 listed" in reasons["short_dir"]
    assert {b.video_id for b in find_bad_videos(bads + recs)} == set(reasons)


def test_bad_video_log_threshold_and_report():
    log = BadVideoLog(total=10, threshold=0.1, train=True)
    log.record_good("a")
    log.record_bad(BadItem("b", "/b.mp4", "zero-length file"))
    log.record_bad(BadItem("b", "/b.mp4", "zero-length file"))  # counted once
    with pytest.raises(BadDataError, match=r"(?s)2 of 10 training videos are bad.*/c.mp4: file not found"):
        log.record_bad(BadItem("c", "/c.mp4", "file not found"))
    strict = BadVideoLog(total=3, train=False)
    strict.record_bad(BadItem("x", "/x.mp4", "file not found"))
    with pytest.raises(BadDataError, match=r"(?s)evaluation met 1 bad video.*skip_bad_eval.*\n  /x.mp4: file not found"):
        strict.end_of_pass()
    lenient = BadVideoLog(total=3, train=False, skip_bad_eval=True)
    lenient.record_good("y")
    lenient.record_bad(BadItem("x", "/x.mp4", "file not found"))
    lenient.end_of_pass()
    lenient.record_padded("/short.mp4", 1)
    lenient.record_padded("/short.mp4", 1)  # counted once
    assert lenient.report() == {"evaluated": 1, "skipped": 1, "bad_files": ["/x.mp4"], "decoder_fallbacks": [],
                                "padded": 1, "padded_files": ["/short.mp4"]}
    merged = BadVideoLog.merge_reports([lenient.report(), {"evaluated": 2, "skipped": 0, "bad_files": [],
                                                           "padded_files": ["/s2.mp4"]}])
    assert (merged["evaluated"], merged["skipped"], merged["bad_files"]) == (3, 1, ["/x.mp4"])
    assert (merged["padded"], merged["padded_files"]) == (2, ["/s2.mp4", "/short.mp4"])

import numpy as np
import pytest
import torch

from bike.config import RunConfig
from bike.data.dataset import BadDataError, BadItem, VideoDataset, VideoItem
from bike.data.lists import VideoRecord
from bike.data.loader import Batch, UnpaddedDistributedSampler, collate_videos, make_loader
from bike.data.video_io import write_mp4

H, W, T = 32, 64, 4


def cfg(**data):
    return RunConfig(model={"frames": T, "resolution": 32}, train={"short_side": 32}, data=data)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    d = tmp_path_factory.mktemp("loader")
    recs = []
    for i in range(6):
        frames = np.full((12, H, W, 3), 20 * i, np.uint8)
        path = write_mp4(d / f"v{i}.mp4", frames, fps=10, lossless=True)
        recs.append(VideoRecord(str(path), i % 3, f"v{i}.mp4"))
    (d / "zero.mp4").write_bytes(b"")
    (d / "junk.mp4").write_bytes(b"junk" * 100)
    bad = [VideoRecord(str(d / "zero.mp4"), 0, "zero.mp4"), VideoRecord(str(d / "junk.mp4"), 1, "junk.mp4")]
    return recs, bad


def test_train_batches_shapes_shuffle_and_drop_last(records):
    recs, _ = records
    ds = VideoDataset(recs, cfg(), train=True)
    loader = make_loader(ds, batch_size=4, train=True, num_workers=0, seed=1)
    batches = list(loader)
    assert len(batches) == 1  # 6 videos, batch 4, last partial batch dropped
    clips, labels, ids, views = batches[0]
    assert clips.shape == (4, T, 3, 32, 32) and labels.dtype == torch.long and labels.shape == (4,)
    assert views.tolist() == [0, 0, 0, 0] and len(set(ids)) == 4
    assert [int(v[1]) % 3 for v in ids] == labels.tolist()  # labels travel with their videos
    orders = []
    for epoch in (0, 0, 1):
        loader.set_epoch(epoch)
        orders.append(list(loader.sampler))
    assert orders[0] == orders[1] and orders[0] != orders[2] and sorted(orders[2]) == list(range(6))


def test_eval_counts_every_video_once_with_workers_and_reports_bad(records):
    recs, bad = records
    ds = VideoDataset(recs[:3] + bad + recs[3:], cfg(skip_bad_eval=True), train=False, views=(1, 3))
    loader = make_loader(ds, batch_size=4, train=False, num_workers=2)
    assert loader.persistent_workers and loader.prefetch_factor == 2
    seen = []
    for batch in loader:
        assert isinstance(batch, Batch) and batch.clips.shape[1:] == (T, 3, 32, 32)
        seen.extend(zip(batch.video_ids, batch.views.tolist()))
    assert sorted(seen) == sorted((r.video_id, v) for r in recs for v in range(3))
    report = ds.bad_log.report()
    assert report["evaluated"] == 6 and report["skipped"] == 2
    assert report["bad_files"] == sorted(r.path for r in bad)


def test_strict_eval_raises_with_the_bad_files_after_the_pass(records):
    recs, bad = records
    ds = VideoDataset(recs + bad, cfg(), train=False)
    loader = make_loader(ds, batch_size=3, train=False, num_workers=0)
    got = []
    with pytest.raises(BadDataError, match=r"(?s)2 bad video\(s\) of 8.*zero.mp4: zero-length file.*junk.mp4"):
        for batch in loader:
            got.extend(batch.video_ids)
    assert sorted(got) == sorted(r.video_id for r in recs)  # the good ones were all delivered first


def test_training_fails_once_bad_share_exceeds_threshold(records):
    recs, bad = records
    ok = VideoDataset(recs + bad[:1], cfg(bad_video_threshold=0.15), train=True)  # 1/7 = 14% <= 15%
    n = sum(len(b) for b in make_loader(ok, batch_size=1, train=True, num_workers=2, seed=0))
    assert n == 6 and ok.bad_log.report()["skipped"] == 1
    too_many = VideoDataset(recs + bad, cfg(bad_video_threshold=0.15), train=True)  # 2/8 = 25%
    with pytest.raises(BadDataError, match=r"2 of 8 training videos are bad"):
        for _ in make_loader(too_many, batch_size=2, train=True, num_workers=0, seed=0):
            pass


def test_multi_label_batches(records):
    recs, _ = records
    ml = [VideoRecord(r.path, (i % 5, 4), r.video_id) for i, r in enumerate(recs)]
    ds = VideoDataset(ml, cfg(), train=False, num_classes=5)
    batch = next(iter(make_loader(ds, batch_size=6, train=False, num_workers=0)))
    assert batch.labels.dtype == torch.float32 and batch.labels.shape == (6, 5)
    assert batch.labels[:, 4].tolist() == [1.0] * 6 and batch.labels.sum(1).tolist() == [2.0, 2.0, 2.0, 2.0, 1.0, 2.0]


def test_collate_drops_bad_and_none_items():
    clip = torch.zeros(T, 3, 8, 8)
    items = [VideoItem(clip, 1, "a", 0), None, BadItem("b", "/b", "zero-length file"), VideoItem(clip + 1, 2, "c", 1)]
    batch = collate_videos(items)
    assert batch.video_ids == ["a", "c"] and batch.labels.tolist() == [1, 2] and batch.views.tolist() == [0, 1]
    assert [b.video_id for b in batch.bad] == ["b"] and batch.num_none == 1
    assert torch.equal(batch.clips[1], clip + 1)
    empty = collate_videos([BadItem("b", "/b", "x")])
    assert len(empty) == 0 and len(empty.bad) == 1


@pytest.mark.parametrize("num_videos, views, world", [(10, 3, 4), (7, 1, 3), (2, 4, 3)])
def test_unpadded_distributed_sampler_covers_each_item_once(num_videos, views, world):
    parts = [list(UnpaddedDistributedSampler(num_videos * views, views, world, r)) for r in range(world)]
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(num_videos * views))  # no padding, no duplicates
    for p in parts:  # whole videos per rank
        assert len(p) % views == 0 and all(p[k] // views == p[k + views - 1] // views for k in range(0, len(p), views))
    assert max(map(len, parts)) - min(map(len, parts)) <= views


def test_distributed_eval_loader_uses_unpadded_sampler(records):
    recs, _ = records
    ds = VideoDataset(recs[:5], cfg(), train=False)
    ids = []
    for rank in range(2):
        loader = make_loader(ds, batch_size=2, train=False, num_workers=0, distributed=True, world_size=2, rank=rank)
        assert isinstance(loader.sampler, UnpaddedDistributedSampler)
        ids += [v for b in loader for v in b.video_ids]
    assert sorted(ids) == sorted(r.video_id for r in recs[:5])


def test_worker_batches_equal_in_process_batches_and_keep_padded_counts(records, tmp_path):
    """Clips stacked in a worker (into shared memory) are the clips stacked in-process; the padded
    videos survive ``pin_memory`` and ``to``."""
    recs, _ = records
    ds = VideoDataset(recs, cfg(), train=False)
    inline = [b.clips for b in make_loader(ds, batch_size=4, train=False, num_workers=0, pin_memory=False)]
    loader = make_loader(VideoDataset(recs, cfg(), train=False), batch_size=4, train=False, num_workers=1, pin_memory=False)
    workers = [b.clips for b in loader]
    assert len(workers) == len(inline) == 2
    assert all(torch.equal(a, b) for a, b in zip(inline, workers))
    short = write_mp4(tmp_path / "short.mp4", np.full((2, H, W, 3), 9, np.uint8), fps=10, lossless=True)
    batch = collate_videos([VideoDataset([VideoRecord(str(short), 0, "s")], cfg(), train=False)[0]])
    assert batch.padded == [(str(short), 2)]
    assert batch.to("cpu").padded == batch.padded
    if torch.cuda.is_available():
        assert batch.pin_memory().padded == batch.padded

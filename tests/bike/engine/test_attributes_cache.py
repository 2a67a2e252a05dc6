"""Attribute generation is cached by video id and reused only when the generator setting matches."""

import json
from pathlib import Path

import pytest
import torch

import bike.engine.attributes_cache as ac
from bike.engine.datasets import split_records
from tests.bike.engine.tinyrun import make_dataset, tiny_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("attr_data"), per_class_train=1, per_class_val=1)


def test_generate_cache_reuse_and_invalidate(data, tmp_path, monkeypatch):
    cfg = tiny_config(data, attributes={"enabled": True})
    val, _ = split_records(cfg, "val")
    torch.manual_seed(0)
    got = ac.ensure_attributes(cfg, tmp_path / "run", val, torch.device("cpu"))
    lexicon = (Path(data["root"]) / "lexicon.txt").read_text().split("\n")
    assert set(got) == {r.video_id for r in val}
    assert all(len(p) == 5 and len(set(p)) == 5 and set(p) <= set(lexicon) for p in got.values())
    stored = json.loads((tmp_path / "run/cache/attributes.json").read_text())
    assert stored["signature"]["lexicon"] == cfg.attributes.lexicon and stored["videos"] == got

    calls = []
    monkeypatch.setattr(ac, "generate_for_records", lambda c, recs, *a: calls.append(len(recs)) or {})
    assert ac.ensure_attributes(cfg, tmp_path / "run", val, torch.device("cpu")) == got and calls == []
    # another run starting from this one inherits the cache
    child = tiny_config(data, attributes={"enabled": True}, init_from=str(tmp_path / "run"))
    assert ac.ensure_attributes(child, tmp_path / "child", val, torch.device("cpu")) == got and calls == []
    # a different lexicon depth is a different cache: everything is generated again
    other = tiny_config(data, attributes={"enabled": True, "max_attributes": 3, "num_attributes": 2})
    ac.ensure_attributes(other, tmp_path / "run", val, torch.device("cpu"))
    assert calls == [len(val)]


def test_unknown_lexicon_names_the_places_looked(data):
    cfg = tiny_config(data, attributes={"enabled": True, "lexicon": "no_such_lexicon"})
    with pytest.raises(FileNotFoundError, match="no_such_lexicon.*lexicons/no_such_lexicon.txt"):
        ac.resolve_lexicon(cfg)


def test_unrelated_runs_share_one_generation_through_the_store(data, tmp_path, monkeypatch):
    """Two runs that do not descend from one another (Table 6's bike and mean_pool_attr) generate each
    video once when $BIKE_SHARED_CACHE is set; without it, each generates everything."""
    cfg = tiny_config(data, attributes={"enabled": True})
    val, _ = split_records(cfg, "val")
    train, _ = split_records(cfg, "train")
    calls = []
    real = ac.generate_for_records
    monkeypatch.setattr(ac, "generate_for_records", lambda c, recs, *a: calls.append(len(recs)) or real(c, recs, *a))

    monkeypatch.delenv(ac.SHARED_CACHE_ENV, raising=False)
    ac.ensure_attributes(cfg, tmp_path / "alone_a", val, torch.device("cpu"))
    ac.ensure_attributes(cfg, tmp_path / "alone_b", val, torch.device("cpu"))
    assert calls == [len(val), len(val)]

    calls.clear()
    monkeypatch.setenv(ac.SHARED_CACHE_ENV, str(tmp_path / "shared"))
    a = ac.ensure_attributes(cfg, tmp_path / "a", val, torch.device("cpu"))
    b = ac.ensure_attributes(cfg, tmp_path / "b", val + train, torch.device("cpu"))  # only the train videos are new
    c = ac.ensure_attributes(cfg, tmp_path / "c", train, torch.device("cpu"))
    assert calls == [len(val), len(train)]
    assert {v: b[v] for v in a} == a and {v: b[v] for v in c} == c
    stores = list((tmp_path / "shared" / "attributes").glob("*.json"))
    assert len(stores) == 1 and len(json.loads(stores[0].read_text())["videos"]) == len(val) + len(train)
    # another generator setting is another store: nothing is taken from this one
    other = tiny_config(data, attributes={"enabled": True, "max_attributes": 3, "num_attributes": 2})
    ac.ensure_attributes(other, tmp_path / "d", val, torch.device("cpu"))
    assert calls[-1] == len(val) and len(list((tmp_path / "shared" / "attributes").glob("*.json"))) == 2


def _generate_in_process(data, run_dir, shared, counts_file):
    """A separate process: ensure the val attributes with the store, recording how many it generated."""
    import os

    import bike.engine.attributes_cache as mod

    os.environ[mod.SHARED_CACHE_ENV] = shared
    real = mod.generate_for_records

    def counting(c, recs, *a):
        with open(counts_file, "a") as fh:
            fh.write(f"{len(recs)}\n")
        import time

        time.sleep(0.5)  # hold the lock long enough for the other process to arrive
        return real(c, recs, *a)

    mod.generate_for_records = counting
    cfg = tiny_config(data, attributes={"enabled": True})
    val, _ = split_records(cfg, "val")
    mod.ensure_attributes(cfg, Path(run_dir), val, torch.device("cpu"))


def test_two_runs_started_together_generate_each_video_once(data, tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    counts = tmp_path / "counts.txt"
    procs = [ctx.Process(target=_generate_in_process, args=(data, str(tmp_path / f"r{i}"), str(tmp_path / "shared"), str(counts)))
             for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    cfg = tiny_config(data, attributes={"enabled": True})
    val, _ = split_records(cfg, "val")
    assert [int(x) for x in counts.read_text().split()] == [len(val)]  # one process generated, the other waited and read
    a = json.loads((tmp_path / "r0/cache/attributes.json").read_text())["videos"]
    b = json.loads((tmp_path / "r1/cache/attributes.json").read_text())["videos"]
    assert a == b and len(a) == len(val)


def _ensure_on_ranks(rank, world, port, data, out_dir):
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.pop(ac.SHARED_CACHE_ENV, None)
    torch.set_num_threads(1)
    import torch.distributed as dist

    from bike.distributed import init_distributed

    init_distributed()
    try:
        out = Path(out_dir)
        generated = []
        real = ac.generate_for_records
        ac.generate_for_records = lambda c, recs, *a: generated.append(len(recs)) or real(c, recs, *a)
        cfg = tiny_config(data, attributes={"enabled": True})
        val, _ = split_records(cfg, "val")
        fresh = ac.ensure_attributes(cfg, out / "fresh", val, torch.device("cpu"), rank=rank, world_size=world)
        # a run whose init_from run holds every video: nothing is generated, every rank gets everything
        child = tiny_config(data, attributes={"enabled": True}, init_from=str(out / "fresh"))
        if rank == 0:  # the child's own cache already holds one video (e.g. from an interrupted attempt)
            first = next(iter(fresh))
            path = out / "child" / "cache" / "attributes.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"signature": ac.generator_signature(child), "videos": {first: fresh[first]}}))
        dist.barrier()
        inherited = ac.ensure_attributes(child, out / "child", val, torch.device("cpu"), rank=rank, world_size=world)
        (out / f"rank{rank}.json").write_text(json.dumps({"generated": generated, "fresh": fresh, "inherited": inherited}))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.timeout(180)
def test_two_ranks_split_the_generation_and_all_get_every_video(data, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ensure_on_ranks, args=(2, port, data, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    cfg = tiny_config(data, attributes={"enabled": True})
    val, _ = split_records(cfg, "val")
    n = len(val)
    assert sorted(r0["generated"] + r1["generated"]) == sorted([n - n // 2, n // 2])  # each rank its share, once
    assert r0["fresh"] == r1["fresh"] == r0["inherited"] == r1["inherited"] and len(r0["fresh"]) == n

"""Attribute generation is cached by video id and reused only when the generator setting matches."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tinyrun import make_dataset, tiny_config  # noqa: E402

import bike.engine.attributes_cache as ac  # noqa: E402
from bike.engine.datasets import split_records  # noqa: E402


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

"""Run logging: log.txt, metrics.jsonl (NaN -> null), the metrics callback, rank 0 only."""

import json
import math

from bike.engine.logging import RunLogger, read_metrics


def test_metrics_lines_and_callback(tmp_path):
    seen = []
    with RunLogger(tmp_path, progress=False, on_metrics=lambda m, s: seen.append((s, m["loss"]))) as log:
        log.info("hello %d", 3)
        log.metrics({"kind": "train", "loss": 1.5, "bad": math.nan}, step=7)
        items = list(log.iterate(range(5), 5, "x", every=2))
    assert items == list(range(5))
    recs = read_metrics(tmp_path)
    assert recs[0]["step"] == 7 and recs[0]["loss"] == 1.5 and recs[0]["bad"] is None
    assert seen == [(7, 1.5)]
    text = (tmp_path / "log.txt").read_text()
    assert "hello 3" in text and "x: 4/5" in text
    json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])


def test_other_ranks_write_nothing(tmp_path):
    with RunLogger(tmp_path / "r1", is_main=False, progress=False) as log:
        log.info("x")
        log.metrics({"a": 1}, 0)
    assert not (tmp_path / "r1").exists()

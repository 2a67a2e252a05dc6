"""Run splits: tuning hold-out carved from the training list, few-shot selection."""

import pytest

from bike.engine.datasets import FEW_SHOT_LIST, split_records, training_records
from tests.bike.engine.tinyrun import make_dataset, tiny_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("split_data"), per_class_train=4, per_class_val=1)


def test_tune_split_is_disjoint_from_train_and_independent_of_the_run_seed(data):
    cfg = tiny_config({**data, "tuning_holdout": 0.25})
    train, _ = split_records(cfg, "train")
    tune, _ = split_records(cfg, "tune")
    assert len(train) == 9 and len(tune) == 3
    assert not {r.video_id for r in train} & {r.video_id for r in tune}
    assert sorted(r.label for r in tune) == [0, 1, 2]  # stratified per class
    other_seed = tiny_config({**data, "tuning_holdout": 0.25}, seed=5)
    assert [r.video_id for r in split_records(other_seed, "tune")[0]] == [r.video_id for r in tune]
    with pytest.raises(ValueError, match="tuning_holdout > 0"):
        split_records(tiny_config(data), "tune")


def test_few_shot_repeats_to_the_full_length_and_records_the_choice(data, tmp_path):
    cfg = tiny_config(data, train={"few_shot": 2, "few_shot_seed": 1})
    recs, names = training_records(cfg, tmp_path)
    assert len(recs) == 12 and len({r.video_id for r in recs}) == 6
    lines = (tmp_path / FEW_SHOT_LIST).read_text().split()
    assert len(lines) == 12  # 6 "path label" pairs
    again, _ = training_records(cfg, None)
    assert [r.video_id for r in again] == [r.video_id for r in recs]  # seeded

"""bike.world.measure.lexicon_ranking: the generator's ranking of the lexicon, counted by hand."""

import numpy as np
import torch

from bike.world.measure import lexicon_ranking


def test_lexicon_ranking_counts_own_class_unrelated_and_still_places():
    phrases = ["red ball rising", "blue ball rising", "red ball standing still", "pink heart", "car driving",
               "empty background"]
    phrase_emb = torch.eye(6)
    noise = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.5])
    # video 0 (red ball rising): phrases 0 > 2 > 3; video 1 (blue ball rising): phrases 3 > 1 > 4.
    # Two frames each, whose mean (not each frame) points there.
    v0 = torch.tensor([3.0, 0.0, 2.0, 1.0, 0.0, 0.0])
    v1 = torch.tensor([0.0, 2.0, 0.0, 3.0, 1.0, 0.0])
    frames = torch.stack([torch.stack([v0 + noise, v0 - noise]), torch.stack([v1 + 4 * noise, v1 - 4 * noise])])
    got = lexicon_ranking(frames, np.array([0, 1]), ["red ball rising", "blue ball rising"], phrases, phrase_emb, top=3)
    # first places: "red ball rising" (own), "pink heart" (not own); tops: [0, 2, 3] and [3, 1, 4]
    assert got == {"own_first": 0.5, "own_in_top": 1.0, "unrelated_share": 3 / 6, "still_share": 1 / 6, "top": 3}


def test_the_test_worlds_manifest_reports_the_ranking(test_world):
    r = test_world.metrics["lexicon_ranking_general"]
    assert r["top"] == 5 and 0.0 <= r["own_first"] <= r["own_in_top"] <= 1.0
    assert 0.0 <= r["unrelated_share"] + r["still_share"] <= 1.0

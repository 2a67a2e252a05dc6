import numpy as np

from bike.world.captions import (
    EMPTY_TEMPLATES,
    CaptionSpec,
    negative_captions,
    phrase,
    prefix_captions,
    sample_captions,
    truth_matrix,
    vocabulary_phrases,
)
from bike.world.config import CAPTION_TEMPLATES, MOTION_WORDS, SHAPE_WORDS, STILL_WORDS, UNRELATED_PHRASES, world_config
from bike.world.snapshots import SnapshotPool, Vocabulary


def _pool():
    """Frame 0: a red ball rising and a grey square; frame 1: empty; frame 2: a blue ball standing still."""
    cfg = world_config("default")
    v = Vocabulary.of(cfg)
    S, C, M = v.shapes.index, v.colours.index, v.motions.index
    shape = np.array([[S("ball"), S("square")], [-1, -1], [S("ball"), -1]])
    colour = np.array([[C("red"), C("grey")], [-1, -1], [C("blue"), -1]])
    motion = np.array([[M("rising"), M("still")], [-1, -1], [M("still"), -1]])
    return SnapshotPool(np.zeros((3, 64, 64, 3), np.uint8), shape, colour, motion, v), v


def test_truth_matrix_follows_the_named_attributes():
    pool, v = _pool()
    S, C, M = v.shapes.index, v.colours.index, v.motions.index
    specs = [
        CaptionSpec(S("ball"), C("red"), M("rising")),  # red ball rising
        CaptionSpec(S("square"), C("grey")),  # grey square
        CaptionSpec(shape=S("ball")),  # ball
        CaptionSpec(empty=True),  # empty background
        CaptionSpec(S("ball"), C("blue"), M("rising")),  # blue ball rising
        CaptionSpec(colour=C("red"), motion=M("still")),  # red shape standing still
    ]
    expected = np.array([
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 1, 0, 0, 0],
    ], bool)
    np.testing.assert_array_equal(truth_matrix(pool, np.arange(3), specs), expected)


def test_every_sampled_caption_is_true_of_its_frame():
    pool, _ = _pool()
    idx = np.tile(np.arange(3), 40)
    texts, specs = sample_captions(pool, idx, np.random.default_rng(0))
    assert np.diag(truth_matrix(pool, idx, specs)).all()
    assert any("empty" in t or "nothing" in t for t in texts[1::3])
    assert all(("ball" in t or "circle" in t or "square" in t or "box" in t or "shape" in t) for t in texts[0::3])


def test_canonical_phrase_is_the_class_name():
    assert phrase("csm", "red", "ball", "rising") == "red ball rising"
    assert phrase("cs", "blue", "cross", "still") == "blue cross"


def test_negative_captions_name_unrelated_things_once_and_avoid_taken_captions():
    rng = np.random.default_rng(0)
    taken = {t.format(UNRELATED_PHRASES[0]) for t in CAPTION_TEMPLATES}  # every caption of the first phrase
    seen = set()
    for _ in range(50):
        got = negative_captions(5, taken, rng)
        assert 4 <= len(got) <= 5 and len(set(got)) == len(got)
        assert not taken & set(got)
        named = [p for t in got for p in UNRELATED_PHRASES if t in {c.format(p) for c in CAPTION_TEMPLATES}]
        assert len(named) == len(got) and len(set(named)) == len(named)  # one phrase each, all different
        seen.update(named)
    assert seen == set(UNRELATED_PHRASES[1:])
    assert negative_captions(0, set(), rng) == []
    # their words are trained (rows of the token table the pretraining updates)
    assert set(UNRELATED_PHRASES) <= set(vocabulary_phrases(Vocabulary.of(world_config("default")), negatives=True))
    assert not set(UNRELATED_PHRASES) & set(vocabulary_phrases(Vocabulary.of(world_config("default"))))


def test_list_captions_join_phrases_about_one_object_and_name_their_union():
    pool, v = _pool()
    idx = np.tile(np.array([0, 2]), 60)  # frames with objects
    texts, specs = sample_captions(pool, idx, np.random.default_rng(1), list_p=1.0)
    assert np.diag(truth_matrix(pool, idx, specs)).all()  # every list is true of its frame
    for text, spec in zip(texts, specs):
        parts = text.split(",")
        assert 2 <= len(parts) <= 4
        # the spec names an attribute exactly when some phrase of the list names it
        named_colour = any(c in p for p in parts for c in v.colours)
        assert (spec.colour >= 0) == named_colour
    plain, _ = sample_captions(pool, idx, np.random.default_rng(1))
    assert not any("," in t for t in plain)
    assert "," in vocabulary_phrases(v, lists=True) and "," not in vocabulary_phrases(v)


def test_caption_prefixes_end_at_an_attribute_and_name_what_their_words_name():
    pool, v = _pool()
    idx = np.arange(3)  # frame 1 is empty: no prefix of it
    rng = np.random.default_rng(3)
    got = [prefix_captions(pool, idx, rng, 2) for _ in range(200)]
    pairs = {(t, spec) for texts, specs in got for t, spec in zip(texts, specs)}
    assert all(len(texts) == len(set(texts)) <= 2 for texts, _ in got)
    stems = {t.split("{}")[0] for t in CAPTION_TEMPLATES}
    shape_words = {w for ws in SHAPE_WORDS.values() for phrase_ in ws for w in phrase_.split()}
    motion_phrases = tuple(w for ws in MOTION_WORDS.values() for w in ws) + STILL_WORDS
    for text, spec in pairs:
        words = text[len(max((s for s in stems if text.startswith(s)), key=len)):].split()
        # the spec names the colour when the prefix has a colour word, the shape when it has a shape
        # word, the motion when it ends with a whole motion phrase (never inside "moving up")
        assert (spec.colour >= 0) == (words[0] in v.colours)
        assert (spec.shape >= 0) == any(w in shape_words for w in words)
        assert (spec.motion >= 0) == text.endswith(motion_phrases)
        shape_phrases = tuple(w for ws in SHAPE_WORDS.values() for w in ws) + ("shape",)
        assert text.endswith(tuple(v.colours) + shape_phrases + motion_phrases)
    # every prefix is true of its frame (the frames with an object), and each cut occurs
    texts = [t for t, _ in pairs]
    specs = [s for _, s in pairs]
    truth = truth_matrix(pool, idx, specs)
    assert truth[[0, 2]].any(axis=0).all() and not truth[1].any()
    cut_after = {("c" if s.colour >= 0 else "") + ("s" if s.shape >= 0 else "") + ("m" if s.motion >= 0 else "") for s in specs}
    assert {"c", "cs", "csm", "s", "sm", "cm"} <= cut_after
    assert any(t.endswith(" red") or t == "red" for t in texts)


def test_without_bare_captions_every_caption_is_a_sentence_around_its_phrase():
    """``WorldConfig.pretrain_bare_captions=False``: no caption (object, empty, prefix or negative) is the
    phrase alone; with the default, the bare template is drawn like any other."""
    pool, _ = _pool()
    idx = np.tile(np.arange(3), 60)

    stems = [t.split("{}")[0] for t in CAPTION_TEMPLATES + EMPTY_TEMPLATES if t != "{}"]

    def is_bare(text: str) -> bool:  # no template's words before the phrase
        return not any(text.startswith(stem) for stem in stems)

    with_bare, _ = sample_captions(pool, idx, np.random.default_rng(0))
    without, specs = sample_captions(pool, idx, np.random.default_rng(0), bare=False)
    assert any(is_bare(t) for t in with_bare)
    assert not any(is_bare(t) for t in without)
    assert np.diag(truth_matrix(pool, idx, specs)).all()
    rng = np.random.default_rng(1)
    negatives = [t for _ in range(30) for t in negative_captions(5, set(), rng, bare=False)]
    assert negatives and not any(is_bare(t) for t in negatives)
    prefixes = [t for _ in range(30) for t in prefix_captions(pool, idx, rng, 4, bare=False)[0]]
    assert prefixes and not any(is_bare(t) for t in prefixes)


def test_without_bare_full_captions_a_whole_action_is_always_said_in_a_sentence():
    """``WorldConfig.pretrain_bare_full=False``: a caption naming colour, shape and motion is never the
    phrase alone, while captions naming fewer still are, and every caption stays true of its frame; with
    the default, whole actions are captioned bare as well."""
    pool, _ = _pool()
    idx = np.tile(np.arange(3), 200)
    stems = [t.split("{}")[0] for t in CAPTION_TEMPLATES + EMPTY_TEMPLATES if t != "{}"]

    def is_bare(text: str) -> bool:
        return not any(text.startswith(stem) for stem in stems)

    def full(spec) -> bool:
        return min(spec.shape, spec.colour, spec.motion) >= 0

    for list_p in (0.0, 0.5):
        texts, specs = sample_captions(pool, idx, np.random.default_rng(0), list_p, bare_full=False)
        assert not any(is_bare(t) and full(sp) for t, sp in zip(texts, specs))
        assert any(is_bare(t) and not full(sp) and not sp.empty for t, sp in zip(texts, specs))
        assert any(full(sp) for sp in specs)
        assert np.diag(truth_matrix(pool, idx, specs)).all()
        texts, specs = sample_captions(pool, idx, np.random.default_rng(0), list_p)
        assert any(is_bare(t) and full(sp) for t, sp in zip(texts, specs))

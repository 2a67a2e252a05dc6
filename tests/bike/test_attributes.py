"""bike.attributes: lexicons, phrase ranking against a loop reference, heads and branch (the sentence: test_text.py)."""

from __future__ import annotations

import math

import pytest
import torch

from bike.attributes import (
    AttributeHeads,
    AttributesBranch,
    encode_phrases,
    generate_attributes,
    load_lexicon,
    rank_lexicon,
)
from bike.backbone import load_clip, set_category_encoder_trainable
from bike.config import RunConfig

PHRASES = ["juggling soccer ball", "running on the grass", "shooting goal", "playing guitar", "abseiling", "surfing water"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    backbone = load_clip("bike-tiny").eval()
    set_category_encoder_trainable(backbone, False)
    return backbone


def test_builtin_lexicons_match_their_sources():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    from torchvision.models.video import R3D_18_Weights

    k400 = load_lexicon("k400")
    assert k400 == list(R3D_18_Weights.KINETICS400_V1.meta["categories"])
    assert len(k400) == 400 and k400[0] == "abseiling" and "juggling soccer ball" in k400
    imagenet = load_lexicon("imagenet1k")
    assert imagenet == list(IMAGENET_CLASSNAMES) and len(imagenet) == 1000


def test_user_lexicon_file_and_errors(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("# my phrases\nred ball\n\n  blue sky  \n")
    assert load_lexicon(path) == ["red ball", "blue sky"]
    assert load_lexicon(str(path)) == ["red ball", "blue sky"]
    with pytest.raises(FileNotFoundError, match=r"missing\.txt.*built-in lexicons: k400, imagenet1k"):
        load_lexicon(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    with pytest.raises(ValueError, match=r"empty\.txt holds no phrase"):
        load_lexicon(empty)


def test_encode_phrases(tiny):
    emb = encode_phrases(tiny, PHRASES)
    assert emb.shape == (6, 64) and not emb.requires_grad
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(6))
    with torch.no_grad():
        ref = tiny.model.encode_text(tiny.tokenize(PHRASES))
    torch.testing.assert_close(emb, ref / ref.norm(dim=-1, keepdim=True), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(encode_phrases(tiny, PHRASES, batch_size=4), emb, atol=1e-6, rtol=1e-5)
    templated = encode_phrases(tiny, PHRASES, template="a photo of {}")
    torch.testing.assert_close(templated, encode_phrases(tiny, [f"a photo of {p}" for p in PHRASES]))


def test_rank_lexicon_matches_loop_reference(rng):
    video = torch.randn(4, 8, generator=rng)
    lex = torch.randn(9, 8, generator=rng)
    idx, sims = rank_lexicon(video, lex, max_k=3)
    assert idx.shape == (4, 3) and sims.shape == (4, 3)
    for n in range(4):
        cos = []
        for p in range(9):
            dot = sum(float(video[n, d] * lex[p, d]) for d in range(8))
            cos.append(dot / (float(video[n].norm()) * float(lex[p].norm())))
        order = sorted(range(9), key=lambda p: -cos[p])[:3]
        assert idx[n].tolist() == order
        assert sims[n].tolist() == pytest.approx([cos[p] for p in order], abs=1e-5)
    all_idx, _ = rank_lexicon(video, lex, max_k=50)
    assert all_idx.shape == (4, 9)  # at most P
    with pytest.raises(ValueError, match="max_k=0"):
        rank_lexicon(video, lex, 0)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        rank_lexicon(video, lex[:, :4], 2)


def test_generate_attributes_finds_the_phrase_a_video_shows(tiny):
    lex = encode_phrases(tiny, PHRASES)
    # video n's frames are noisy copies of phrase (2n)'s embedding: its top attribute is that phrase
    gen = torch.Generator().manual_seed(3)
    frames = torch.stack([lex[2 * n] * 5 + 0.01 * torch.randn(4, 64, generator=gen) for n in range(3)])
    ranked, sims = generate_attributes(tiny, frames, PHRASES, max_k=4, return_scores=True)
    assert [r[0] for r in ranked] == [PHRASES[0], PHRASES[2], PHRASES[4]]
    assert all(len(r) == 4 and len(set(r)) == 4 for r in ranked)
    assert torch.all(sims[:, :-1] >= sims[:, 1:])
    shorter = generate_attributes(tiny, frames, PHRASES, max_k=2)
    assert shorter == [r[:2] for r in ranked]  # smaller k is a slice


def test_generate_attributes_from_clip_batches(tiny, rng):
    clips = torch.randn(3, 2, 3, 64, 64, generator=rng)
    loader = [(clips[:2], torch.tensor([0, 1])), (clips[2:], torch.tensor([2]))]
    from_loader = generate_attributes(tiny, loader, "k400", max_k=5)
    with torch.no_grad():
        frame_emb = tiny.encode_frames(clips)
    assert from_loader == generate_attributes(tiny, frame_emb, "k400", max_k=5)
    assert from_loader == generate_attributes(tiny, clips, "k400", max_k=5)
    assert all(p in load_lexicon("k400") for p in from_loader[0])
    with pytest.raises(ValueError, match="no video"):
        generate_attributes(tiny, [], PHRASES, max_k=2)


def test_attribute_heads_structure_and_init():
    torch.manual_seed(0)
    heads = AttributeHeads(256)
    for head in (heads.sentence_head, heads.class_head):
        kinds = [type(m).__name__ for m in head]
        assert kinds == ["Linear", "ReLU", "Linear"]
        for lin in (head[0], head[2]):
            assert lin.weight.shape == (256, 256)
            assert abs(lin.weight.std().item() - 0.02) < 0.001 and torch.count_nonzero(lin.bias) == 0
    s, c = heads(torch.randn(3, 256), torch.randn(5, 256))
    assert s.shape == (3, 256) and c.shape == (5, 256)


def _cos_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(a.shape[0], b.shape[0])
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            out[i, j] = float((a[i] * b[j]).sum()) / math.sqrt(float((a[i] ** 2).sum()) * float((b[j] ** 2).sum()))
    return out


def test_untrained_branch_is_plain_text_tower_cosine(tiny):
    ranked = [PHRASES[:3], PHRASES[3:]]
    names = ["soccer", "music"]
    branch = AttributesBranch(64, num_attributes=2)
    assert branch.heads is None
    scores = branch.score(tiny, ranked, names)
    sentences = [f"This is a video about {ranked[0][0]},{ranked[0][1]}", f"This is a video about {ranked[1][0]},{ranked[1][1]}"]
    assert branch.sentences(ranked) == sentences
    with torch.no_grad():
        s = tiny.model.encode_text(tiny.tokenize(sentences))
        c = tiny.model.encode_text(tiny.tokenize([f"This is a video about {n}" for n in names]))
    torch.testing.assert_close(scores, _cos_matrix(s, c), atol=1e-5, rtol=1e-5)
    bare = AttributesBranch(64, num_attributes=2, prompt_categories=False, prompt_attributes=False)
    assert bare.class_texts(names) == names and bare.sentences(ranked)[0] == f"{ranked[0][0]},{ranked[0][1]}"
    assert (bare.score(tiny, ranked, names) - scores).abs().max() > 1e-4


def test_trained_branch_applies_heads_and_learns(tiny, rng):
    branch = AttributesBranch(64, trained=True)
    with torch.no_grad():  # trained biases: without them the input norm would cancel in the cosine
        for p in branch.heads.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.5, generator=rng)
    sent, cls = 5 * torch.randn(3, 64, generator=rng), 3 * torch.randn(4, 64, generator=rng)
    # the released code: text embeddings L2-normalised, then sentence_fc / query_fc
    # (Linear-ReLU-Linear), then normalised again for the cosine
    s_n, c_n = sent / sent.norm(dim=-1, keepdim=True), cls / cls.norm(dim=-1, keepdim=True)
    expected = _cos_matrix(branch.heads.sentence_head(s_n).detach(), branch.heads.class_head(c_n).detach())
    torch.testing.assert_close(branch(sent, cls), expected, atol=1e-5, rtol=1e-5)
    unnormalised = _cos_matrix(branch.heads.sentence_head(sent).detach(), branch.heads.class_head(cls).detach())
    assert (branch(sent, cls) - unnormalised).abs().max() > 1e-3  # the normalisation matters
    scores = branch.score(tiny, [PHRASES[:2]] * 2, ["a", "b"])
    scores.sum().backward()
    assert all(p.grad is not None for p in branch.parameters())
    assert all(p.grad is None for p in tiny.text_parameters())


def test_from_config():
    cfg = RunConfig(attributes={"train": True, "num_attributes": 3, "prompt_categories": False, "separator": ";"})
    branch = AttributesBranch.from_config(cfg.attributes, width=64, prompt=cfg.model.prompt)
    assert branch.heads is not None and branch.num_attributes == 3 and branch.separator == ";"
    assert not branch.prompt_categories and branch.prompt_attributes
    assert AttributesBranch.from_config(RunConfig().attributes, width=64).heads is None

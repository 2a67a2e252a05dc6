import pytest
import yaml

from bike.config import ConfigError, RunConfig


def test_official_profile_defaults_match_released_code():
    cfg = RunConfig()
    assert cfg.model.vcs_tokens == "all"
    assert cfg.loss.form == "soft_kl" and cfg.loss.learn_logit_scale
    assert cfg.fusion.transform == "softmax"
    assert cfg.model.prompt == "This is a video about {}"
    assert cfg.attributes.num_attributes == 5


def test_paper_profile_switches_formulas_but_explicit_fields_win():
    cfg = RunConfig.model_validate({"profile": "paper", "loss": {"form": "soft_kl"}})
    assert cfg.model.vcs_tokens == "words"
    assert cfg.fusion.transform == "cosine"
    assert cfg.loss.form == "soft_kl"  # explicit value kept
    assert cfg.loss.learn_logit_scale is False


def test_lambda_defaults_follow_backbone():
    # official: the released code fuses 0.7 * video + 0.3 * attributes, for every backbone
    assert RunConfig().fusion_lambda == 0.7
    assert RunConfig.model_validate({"model": {"backbone": "ViT-L-14"}}).fusion_lambda == 0.7
    # paper (A.1): "we set λ to 0.6 for the Video branch with ViT-B and λ to 0.8 for the Video branch with ViT-L"
    assert RunConfig(profile="paper").fusion_lambda == 0.6
    assert RunConfig.model_validate({"profile": "paper", "model": {"backbone": "ViT-L-14"}}).fusion_lambda == 0.8
    # an explicit value always wins
    assert RunConfig.model_validate({"fusion": {"lam": 0.45}}).fusion_lambda == 0.45
    assert RunConfig.model_validate({"profile": "paper", "fusion": {"lam": 0.45}}).fusion_lambda == 0.45


def test_short_side_follows_the_released_rescale_rule_for_every_resolution():
    # the released test.py and utils/Augmentation.py:
    #     scale_size = 256 if config.data.input_size == 224 else config.data.input_size
    def released(input_size):
        return 256 if input_size == 224 else input_size

    for profile in ("official", "paper"):  # the paper gives no sizes: both follow the code
        for resolution in (224, 336, 64, 32, 448):
            cfg = RunConfig.model_validate({"profile": profile, "model": {"resolution": resolution}})
            assert cfg.short_side == released(resolution), (profile, resolution)
    # an explicit value always wins, and is what the resolved config records
    cfg = RunConfig.model_validate({"model": {"resolution": 64}, "train": {"short_side": 73}})
    assert cfg.short_side == 73

def test_runs_whose_resize_changed_get_a_new_identity_and_the_others_keep_theirs():
    import hashlib
    import json

    def identity_before(cfg):  # the identity before the resize followed the released rule
        def drop_nulls(v):
            if isinstance(v, dict):
                return {k: drop_nulls(x) for k, x in v.items() if x is not None}
            return [drop_nulls(x) for x in v] if isinstance(v, list) else v
        blob = json.dumps(drop_nulls(cfg.model_dump(mode="json", exclude={"name"})), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    for resolution in (224, 336):  # resized as before: a finished run there is still the same run
        cfg = RunConfig.model_validate({"model": {"resolution": resolution}})
        assert cfg.content_hash() == identity_before(cfg)
    for resolution in (64, 32):  # resized to 73 / 36 before, to 64 / 32 now: never resumed from old numbers
        cfg = RunConfig.model_validate({"model": {"resolution": resolution}})
        explicit = RunConfig.model_validate({"model": {"resolution": resolution}, "train": {"short_side": resolution}})
        assert cfg.content_hash() != identity_before(cfg)
        assert cfg.content_hash() == explicit.content_hash()  # the same behaviour, the same run

def test_content_hash_ignores_name_and_tracks_content():
    a = RunConfig(name="a")
    b = RunConfig(name="b")
    c = RunConfig.model_validate({"model": {"frames": 16}})
    assert a.content_hash() == b.content_hash()
    assert a.content_hash() != c.content_hash()


def test_yaml_round_trip_and_errors_name_file_and_field(tmp_path):
    path = tmp_path / "run.yaml"
    cfg = RunConfig.model_validate({"model": {"frames": 4}})
    path.write_text(cfg.to_yaml())
    assert RunConfig.from_yaml(path) == cfg

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"interaction": "attention", "framez": 3}}))
    with pytest.raises(ConfigError) as info:
        RunConfig.from_yaml(bad)
    msg = str(info.value)
    assert str(bad) in msg
    assert "model.interaction" in msg and "'attention'" in msg and "'vcs'" in msg
    assert "model.framez" in msg and "unknown field" in msg


def test_num_attributes_cannot_exceed_cache():
    with pytest.raises(ValueError, match="max_attributes"):
        RunConfig.model_validate({"attributes": {"num_attributes": 12, "max_attributes": 10}})


def test_an_unset_optional_field_does_not_change_the_run_identity():
    """Adding an optional (null-default) field to the schema keeps existing run ids: nulls are not hashed."""
    import hashlib
    import json

    cfg = RunConfig()
    payload = cfg.model_dump(mode="json", exclude={"name"})
    payload["data"]["exclude_list"] = None  # as if the field were new
    payload["data"].pop("train_root")  # or absent
    def strip(v):
        return {k: strip(x) for k, x in v.items() if x is not None} if isinstance(v, dict) else v
    blob = json.dumps(strip(payload), sort_keys=True, separators=(",", ":"))
    assert cfg.content_hash() == hashlib.sha256(blob.encode()).hexdigest()[:12]
    assert RunConfig(data={"exclude_list": "x.txt"}).content_hash() != cfg.content_hash()

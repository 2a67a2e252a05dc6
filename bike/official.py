"""The authors' released checkpoints (github.com/whwu95/BIKE, README model zoo), read as bikebench models.

A released checkpoint is a ``torch.save``-d dict::

    epoch                    int
    model_state_dict         their vendored OpenAI CLIP, OpenAI's state-dict layout (visual.*,
                             transformer.resblocks.*, token_embedding.weight, positional_embedding,
                             ln_final.*, text_projection, logit_scale); keys may carry ``module.``
    fusion_model_state_dict  the head trained with it:
                             video head  frame_position_embeddings.weight [77, D] and a 6-layer temporal
                                         transformer transformer.resblocks.{i}.* (heads = text width // 64,
                                         LayerNorm ε 1e-12); empty when the temporal module is "None"
                                         (VCS and the mean pool have no weights)
                             attributes  query_fc.{0,2}.*, sentence_fc.{0,2}.* (Linear–ReLU–Linear each),
                                         in the attributes-stage checkpoint (train_attributes.py)
    optimizer_state_dict     ignored

The architecture is not stored: :func:`infer_model_config` reads it from the shapes as open_clip does
for OpenAI state dicts (vision width, layers, patch size, image resolution; text width, layers,
context length, vocabulary). OpenAI CLIP runs QuickGELU, so the model is built as open_clip's
``*-quickgelu`` configuration, in float32 (a half-precision file is cast).

:func:`load_official_checkpoint` gives an :class:`OfficialModel` (``clip``: a
:class:`~bike.backbone.ClipBackbone`, ``video_branch``: a :class:`~bike.video_branch.VideoBranch`
computing what the released ``video_header`` computes, ``attribute_heads``, ``model_config``);
:func:`convert_official_state` maps the released keys onto a :class:`bike.engine.model.BikeModel`'s
(``backbone.model.*``, ``video_branch.temporal.*``, ``attributes.heads.*``, ``logit_scale.log_scale``),
which is what ``bikebench import official`` writes as a run's checkpoint and what
``bike.engine.checkpoint.load_checkpoint`` does when ``init_from`` names a released file.

Shapes: B videos, T frames, D embedding width, K classes, L = 77 text positions.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from bike.attributes import AttributeHeads
from bike.backbone import ClipBackbone, TextFeatures
from bike.config import DEFAULT_PROMPT
from bike.temporal import HEAD_WIDTH, RELEASED_LN_EPS
from bike.video_branch import VideoBranch

#: Top-level entries of a released checkpoint (``utils.utils.epoch_saving`` of the authors' code).
CLIP_KEY = "model_state_dict"
HEAD_KEY = "fusion_model_state_dict"
OPTIMIZER_KEY = "optimizer_state_dict"
EPOCH_KEY = "epoch"
RELEASED_TOP_LEVEL = (EPOCH_KEY, CLIP_KEY, HEAD_KEY, OPTIMIZER_KEY)
#: Entries a released checkpoint must have (``epoch`` and the optimiser state are optional here).
REQUIRED_TOP_LEVEL = (CLIP_KEY, HEAD_KEY)
#: The ``module.`` prefix DataParallel / DDP put on every key.
DDP_PREFIX = "module."
#: Keys of OpenAI's TorchScript exports that are not parameters (dropped as open_clip drops them).
_NON_PARAMETER_KEYS = ("input_resolution", "context_length", "vocab_size")
#: τ of VCS in the released code (``F.softmax(sims / 0.01)``).
RELEASED_VCS_TAU = 0.01
#: The released interactions (``network.interaction``) and bikebench's names for them.
INTERACTIONS = {"vcs": "vcs", "VCS": "vcs", "dp": "mean", "DP": "mean", "mean": "mean"}

#: OpenAI CLIP architectures, (vision width, layers, patch, resolution, text width, text layers, D) ->
#: the open_clip name with QuickGELU. Anything else is built as a custom configuration.
KNOWN_BACKBONES: dict[tuple[int, int, int, int, int, int, int], str] = {
    (768, 12, 32, 224, 512, 12, 512): "ViT-B-32-quickgelu",
    (768, 12, 16, 224, 512, 12, 512): "ViT-B-16-quickgelu",
    (1024, 24, 14, 224, 768, 12, 768): "ViT-L-14-quickgelu",
    (1024, 24, 14, 336, 768, 12, 768): "ViT-L-14-336-quickgelu",
}

_VIDEO_HEAD_POS = "frame_position_embeddings.weight"
_VIDEO_HEAD_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_ATTR_HEAD = re.compile(r"^(query_fc|sentence_fc)\.(\d+)\.(weight|bias)$")
#: released attribute head -> bikebench ``AttributeHeads`` submodule.
ATTRIBUTE_HEAD_NAMES = {"query_fc": "class_head", "sentence_fc": "sentence_head"}


class OfficialCheckpointError(ValueError):
    """A file that is not a usable released checkpoint; the message names the file and the entry."""


# ------------------------------------------------------------------------------------ reading
def is_official_checkpoint(obj: Any) -> bool:
    """Whether a loaded object has the released layout (a dict with ``model_state_dict`` and
    ``fusion_model_state_dict``), as opposed to a bikebench checkpoint (``model``)."""
    return isinstance(obj, dict) and all(k in obj for k in REQUIRED_TOP_LEVEL) and "model" not in obj


def strip_ddp_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Keys without a leading ``module.`` (the authors' ``update_dict`` removes it the same way)."""
    return {(k[len(DDP_PREFIX):] if k.startswith(DDP_PREFIX) else k): v for k, v in state.items()}


def read_official_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a released checkpoint with ``torch.load(weights_only=True)`` and check its entries.

    Returns:
        ``{"epoch": int | None, "clip": {key: tensor}, "head": {key: tensor}}``, keys without
        ``module.``, tensors as stored (the optimiser state is not kept).

    Raises:
        FileNotFoundError: no such file.
        OfficialCheckpointError: unreadable, or not the released layout (naming what is missing).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: released checkpoint not found")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated files, foreign pickles (weights_only refuses arbitrary objects)
        raise OfficialCheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, dict):
        raise OfficialCheckpointError(f"{path}: expected a dict with {list(RELEASED_TOP_LEVEL)}, got {type(raw).__name__}")
    missing = [k for k in REQUIRED_TOP_LEVEL if k not in raw]
    if missing:
        raise OfficialCheckpointError(
            f"{path}: not a released BIKE checkpoint: missing entr{'y' if len(missing) == 1 else 'ies'} {missing}; "
            f"expected {list(RELEASED_TOP_LEVEL)} (found {sorted(map(str, raw))[:8]})"
        )
    unknown = sorted(str(k) for k in raw if k not in RELEASED_TOP_LEVEL)
    if unknown:
        raise OfficialCheckpointError(f"{path}: unknown top-level entr{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
                                      f"expected {list(RELEASED_TOP_LEVEL)}")
    out: dict[str, Any] = {"epoch": raw.get(EPOCH_KEY)}
    for entry, name in ((CLIP_KEY, "clip"), (HEAD_KEY, "head")):
        state = raw[entry]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise OfficialCheckpointError(f"{path}: {entry}: expected a state dict of tensors, got {type(state).__name__}")
        out[name] = strip_ddp_prefix(state)
    if not out["clip"]:
        raise OfficialCheckpointError(f"{path}: {CLIP_KEY} is empty; expected the CLIP weights")
    for key in _NON_PARAMETER_KEYS:
        out["clip"].pop(key, None)
    return out


# ----------------------------------------------------------------------------- architecture
@dataclass(frozen=True)
class OfficialModelConfig:
    """What a released checkpoint's shapes say about its model.

    Attributes:
        backbone: open_clip name (``ViT-B-16-quickgelu`` ...) or ``custom`` for another shape.
        embed_dim: D. vision_width, vision_layers, patch_size, image_resolution: the image tower.
        text_width, text_layers, text_heads, context_length, vocab_size: the text tower.
        head: ``video`` (a video head, possibly weightless) or ``attributes`` (the attributes-stage heads).
        temporal: ``transformer`` or ``none``. temporal_layers, temporal_heads, max_frames: its shape.
        interaction: ``vcs`` or ``mean`` (the released ``VCS`` / ``DP``; not stored, given by the caller).
        epoch: the checkpoint's ``epoch`` entry.
    """

    backbone: str
    embed_dim: int
    vision_width: int
    vision_layers: int
    patch_size: int
    image_resolution: int
    text_width: int
    text_layers: int
    text_heads: int
    context_length: int
    vocab_size: int
    head: str
    temporal: str
    temporal_layers: int
    temporal_heads: int
    max_frames: int
    interaction: str
    epoch: Optional[int] = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def run_model_fields(self) -> dict[str, Any]:
        """The ``RunConfig.model`` fields of this model (weights come from the checkpoint: ``pretrained`` null)."""
        return {
            "backbone": self.backbone,
            "pretrained": None,
            "resolution": self.image_resolution,
            "temporal": self.temporal,
            "temporal_layers": self.temporal_layers if self.temporal == "transformer" else 6,
            "temporal_ln_eps": RELEASED_LN_EPS,
            "interaction": self.interaction,
            "vcs_tokens": "all",
            "vcs_tau": RELEASED_VCS_TAU,
            "saliency_source": "words",
            "recognition_source": "cls",
            "prompt": DEFAULT_PROMPT,
        }


def _shape(state: dict[str, torch.Tensor], key: str, where: str) -> torch.Size:
    if key not in state:
        raise OfficialCheckpointError(f"{where}: missing key {key!r} (needed to infer the architecture)")
    return state[key].shape


def infer_model_config(
    clip_state: dict[str, torch.Tensor],
    head_state: dict[str, torch.Tensor],
    interaction: str = "vcs",
    epoch: Optional[int] = None,
    source: str = "checkpoint",
) -> OfficialModelConfig:
    """The architecture from the shapes (OpenAI layout; ViT image towers only, as every released model).

    Args:
        clip_state: ``model_state_dict`` without ``module.``. head_state: ``fusion_model_state_dict``.
        interaction: ``vcs`` / ``VCS`` or ``mean`` / ``DP`` (the released config's ``network.interaction``).
        source: names the file in errors.
    """
    where = f"{source}: {CLIP_KEY}"
    if interaction not in INTERACTIONS:
        raise ValueError(f"interaction={interaction!r}; expected one of {sorted(INTERACTIONS)}")
    if "visual.proj" not in clip_state:
        raise OfficialCheckpointError(f"{where}: no 'visual.proj': only ViT image towers are supported (the released models are ViTs)")
    conv = _shape(clip_state, "visual.conv1.weight", where)
    vision_width, patch = int(conv[0]), int(conv[-1])
    vision_layers = len([k for k in clip_state if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
    grid = round((int(_shape(clip_state, "visual.positional_embedding", where)[0]) - 1) ** 0.5)
    embed_dim = int(_shape(clip_state, "text_projection", where)[1])
    text_width = int(_shape(clip_state, "ln_final.weight", where)[0])
    text_layers = len({k.split(".")[2] for k in clip_state if k.startswith("transformer.resblocks.")})
    context_length = int(_shape(clip_state, "positional_embedding", where)[0])
    vocab_size = int(_shape(clip_state, "token_embedding.weight", where)[0])
    resolution = patch * grid
    backbone = KNOWN_BACKBONES.get((vision_width, vision_layers, patch, resolution, text_width, text_layers, embed_dim), "custom")

    head_where = f"{source}: {HEAD_KEY}"
    attr_keys = [k for k in head_state if _ATTR_HEAD.match(k)]
    video_keys = [k for k in head_state if k == _VIDEO_HEAD_POS or _VIDEO_HEAD_BLOCK.match(k)]
    unknown = sorted(set(head_state) - set(attr_keys) - set(video_keys))
    if unknown:
        raise OfficialCheckpointError(
            f"{head_where}: unknown key(s) {unknown[:6]}{' ...' if len(unknown) > 6 else ''}; expected the video head "
            f"({_VIDEO_HEAD_POS}, transformer.resblocks.{{i}}.*) or the attribute heads (query_fc.*, sentence_fc.*)"
        )
    if attr_keys and video_keys:
        raise OfficialCheckpointError(f"{head_where}: holds both a video head and attribute heads; expected one of them")
    temporal, layers, max_frames = "none", 0, 0
    if attr_keys:
        head = "attributes"
    else:
        head = "video"
        if video_keys:
            temporal = "transformer"
            max_frames = int(_shape(head_state, _VIDEO_HEAD_POS, head_where)[0])
            blocks = {int(m.group(1)) for k in video_keys if (m := _VIDEO_HEAD_BLOCK.match(k))}
            if not blocks or sorted(blocks) != list(range(len(blocks))):
                raise OfficialCheckpointError(
                    f"{head_where}: transformer.resblocks indices {sorted(blocks)}; expected 0..n-1")
            layers = len(blocks)
    return OfficialModelConfig(
        backbone=backbone, embed_dim=embed_dim, vision_width=vision_width, vision_layers=vision_layers,
        patch_size=patch, image_resolution=resolution, text_width=text_width, text_layers=text_layers,
        text_heads=max(1, text_width // HEAD_WIDTH), context_length=context_length, vocab_size=vocab_size,
        head=head, temporal=temporal, temporal_layers=layers, temporal_heads=max(1, text_width // HEAD_WIDTH),
        max_frames=max_frames, interaction=INTERACTIONS[interaction], epoch=None if epoch is None else int(epoch),
    )


def build_clip(cfg: OfficialModelConfig) -> torch.nn.Module:
    """An open_clip ``CLIP`` of the inferred shape, QuickGELU, float32, random weights."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(layers=cfg.vision_layers, width=cfg.vision_width, patch_size=cfg.patch_size,
                           image_size=cfg.image_resolution)
    text = CLIPTextCfg(context_length=cfg.context_length, vocab_size=cfg.vocab_size, width=cfg.text_width,
                       heads=cfg.text_heads, layers=cfg.text_layers)
    return CLIP(cfg.embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=True)


def build_video_branch(cfg: OfficialModelConfig) -> VideoBranch:
    """The :class:`VideoBranch` of the released ``video_header``: temporal transformer (heads = text
    width // 64, ε 1e-12, ``max_frames`` position rows) or none; VCS over all 77 positions at τ 0.01, or the mean pool."""
    return VideoBranch(
        cfg.embed_dim,
        temporal=cfg.temporal,
        temporal_layers=max(1, cfg.temporal_layers),
        interaction=cfg.interaction,
        vcs_tokens="all",
        vcs_tau=RELEASED_VCS_TAU,
        saliency_source="words",
        recognition_source="cls",
        max_frames=max(1, cfg.max_frames) if cfg.temporal == "transformer" else 77,
        temporal_heads=cfg.temporal_heads,
        temporal_ln_eps=RELEASED_LN_EPS,
    )


# ---------------------------------------------------------------------------------- key mapping
def official_key_map(clip_state: dict[str, Any], head_state: dict[str, Any]) -> dict[str, list[str]]:
    """Every released key (``model_state_dict`` keys unprefixed, head keys as ``fusion_model_state_dict/<key>``)
    -> the :class:`bike.engine.model.BikeModel` key(s) it fills.

    ``model_state_dict`` keys go under ``backbone.model.`` (open_clip keeps OpenAI's layout);
    ``logit_scale`` also fills ``logit_scale.log_scale`` (the released training scaled with CLIP's);
    ``frame_position_embeddings.weight`` -> ``video_branch.temporal.position_embedding.weight``;
    ``transformer.resblocks.{i}.*`` -> ``video_branch.temporal.resblocks.{i}.*``;
    ``query_fc.*`` -> ``attributes.heads.class_head.*``; ``sentence_fc.*`` -> ``attributes.heads.sentence_head.*``.
    """
    out: dict[str, list[str]] = {}
    for key in clip_state:
        targets = [f"backbone.model.{key}"]
        if key == "logit_scale":
            targets.append("logit_scale.log_scale")
        out[key] = targets
    for key in head_state:
        if key == _VIDEO_HEAD_POS:
            target = "video_branch.temporal.position_embedding.weight"
        elif m := _VIDEO_HEAD_BLOCK.match(key):
            target = f"video_branch.temporal.resblocks.{m.group(1)}.{m.group(2)}"
        elif m := _ATTR_HEAD.match(key):
            target = f"attributes.heads.{ATTRIBUTE_HEAD_NAMES[m.group(1)]}.{m.group(2)}.{m.group(3)}"
        else:
            raise OfficialCheckpointError(f"{HEAD_KEY}: unknown key {key!r}")
        out[f"{HEAD_KEY}/{key}"] = [target]
    return out


def convert_official_state(clip_state: dict[str, torch.Tensor], head_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The released weights as a ``BikeModel`` state dict (float32; see :func:`official_key_map`)."""
    out: dict[str, torch.Tensor] = {}
    for key, targets in official_key_map(clip_state, head_state).items():
        tensor = head_state[key.split("/", 1)[1]] if key.startswith(f"{HEAD_KEY}/") else clip_state[key]
        tensor = tensor.detach().float() if tensor.is_floating_point() else tensor.detach()
        for target in targets:
            out[target] = tensor.reshape(()) if target == "logit_scale.log_scale" else tensor
    return out


def _check_keys(expected: set[str], given: set[str], where: str) -> None:
    missing, unknown = sorted(expected - given), sorted(given - expected)
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) {missing[:6]}{' ...' if len(missing) > 6 else ''}")
        if unknown:
            parts.append(f"unknown {len(unknown)} key(s) {unknown[:6]}{' ...' if len(unknown) > 6 else ''}")
        raise OfficialCheckpointError(f"{where}: {'; '.join(parts)} for the architecture inferred from its shapes")


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    own = module.state_dict()
    _check_keys(set(own), set(state), where)
    for key, value in state.items():
        if tuple(own[key].shape) != tuple(value.shape):
            raise OfficialCheckpointError(
                f"{where}: {key} has shape {tuple(value.shape)}, the inferred architecture expects {tuple(own[key].shape)}")
    module.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}, strict=True)


# ---------------------------------------------------------------------------------------- model
@dataclass
class OfficialModel:
    """A released checkpoint as bikebench modules (eval mode, float32).

    Attributes:
        clip: the CLIP backbone (both towers). video_branch: the released video head (None for an
        attributes-stage checkpoint). attribute_heads: the attributes-stage heads (None otherwise).
        model_config: what the shapes say. source: the file. epoch: its ``epoch`` entry.
    """

    clip: ClipBackbone
    video_branch: Optional[VideoBranch]
    attribute_heads: Optional[AttributeHeads]
    model_config: OfficialModelConfig
    source: Path
    state: dict[str, torch.Tensor]

    def class_text(self, class_names: Sequence[str], template: str = DEFAULT_PROMPT) -> TextFeatures:
        """Text features of the category prompts: ``cls[K, D]``, ``tokens[K, L, D]``."""
        tokens, _ = self.clip.tokenize_prompts(class_names, template)
        with torch.no_grad():
            return self.clip.encode_text(tokens.to(next(self.clip.parameters()).device))

    @torch.no_grad()
    def video_logits(self, clips: torch.Tensor, text: TextFeatures) -> torch.Tensor:
        """Released ``video_head(encode_image(frames), text tokens, cls)``: ``[B, T, 3, H, W] -> [B, K]`` (unscaled)."""
        if self.video_branch is None:
            raise ValueError(f"{self.source}: an attributes-stage checkpoint has no video head")
        return self.video_branch(self.clip.encode_frames(clips), text)

    def bikebench_state(self) -> dict[str, torch.Tensor]:
        """The weights as a ``BikeModel`` state dict (what ``bikebench import official`` stores)."""
        return dict(self.state)

    def to(self, device: str | torch.device) -> "OfficialModel":
        for module in (self.clip, self.video_branch, self.attribute_heads):
            if module is not None:
                module.to(device)
        return self


def load_official_checkpoint(
    path: str | Path, interaction: str = "vcs", device: str | torch.device = "cpu"
) -> OfficialModel:
    """Read a released checkpoint and build its model (see the module docstring).

    Args:
        path: the ``.pt`` file of the README model zoo.
        interaction: ``vcs`` (every released model) or ``mean`` / ``DP``; not stored in the file.
        device: where the modules go.

    Raises:
        FileNotFoundError, OfficialCheckpointError (unknown or missing keys named, with the file).
    """
    import open_clip

    path = Path(path)
    raw = read_official_checkpoint(path)
    clip_state, head_state = raw["clip"], raw["head"]
    cfg = infer_model_config(clip_state, head_state, interaction, raw["epoch"], str(path))
    model = build_clip(cfg)
    _load_strict(model, clip_state, f"{path}: {CLIP_KEY}")
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=cfg.context_length)
    clip = ClipBackbone(model, tokenizer, name=cfg.backbone)
    video_branch = attribute_heads = None
    if cfg.head == "video":
        video_branch = build_video_branch(cfg)
        if cfg.temporal == "transformer":
            mapped = {t[0][len("video_branch."):]: head_state[k.split("/", 1)[1]]
                      for k, t in official_key_map({}, head_state).items()}
            _load_strict(video_branch, mapped, f"{path}: {HEAD_KEY}")
    else:
        attribute_heads = AttributeHeads(cfg.embed_dim)
        mapped = {t[0][len("attributes.heads."):]: head_state[k.split("/", 1)[1]]
                  for k, t in official_key_map({}, head_state).items()}
        _load_strict(attribute_heads, mapped, f"{path}: {HEAD_KEY}")
    out = OfficialModel(clip=clip.eval(), video_branch=None if video_branch is None else video_branch.eval(),
                        attribute_heads=None if attribute_heads is None else attribute_heads.eval(),
                        model_config=cfg, source=path, state=convert_official_state(clip_state, head_state))
    return out.to(device)


def official_checkpoint_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A released file's weights as a ``BikeModel`` state dict, without building the model (what
    ``bike.engine.checkpoint.load_checkpoint`` uses for an ``init_from`` that names a released file)."""
    raw = read_official_checkpoint(path)
    infer_model_config(raw["clip"], raw["head"], "vcs", raw["epoch"], str(path))  # refuses unknown layouts
    return convert_official_state(raw["clip"], raw["head"])


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()

"""The CLIP backbone: any open_clip model, with per-position text features and prompt word masks.

``load_clip(name, pretrained)`` builds an open_clip model and wraps it in :class:`ClipBackbone`, which
exposes what BIKE needs from CLIP:

* ``encode_frames(x[B, T, 3, H, W]) -> [B, T, D]`` — the image tower on every frame, unnormalised;
* ``encode_text(tokens[K, L]) -> TextFeatures(cls[K, D], tokens[K, L, D])`` — the text tower's output
  at every position (after the final LayerNorm and the text projection) and at the end-of-text
  position (the [CLS] embedding, identical to ``model.encode_text``);
* ``tokenize_prompts(names, template) -> (tokens[K, L], word_mask[K, L])`` — the class prompts and a
  mask of the positions holding the class-name words.

Weights (``pretrained``): an open_clip tag (``openai``, ``laion2b_s34b_b79k``...), a local checkpoint
file (a ``torch.save``-d state dict, ``{"state_dict": ...}``, or OpenAI's TorchScript release), or
``None`` (random initialisation). Nothing is downloaded when ``HF_HUB_OFFLINE=1``: a tag whose weights
are not cached fails at once with a message that says to pass a local checkpoint file instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import open_clip
import torch
from open_clip.model import resize_pos_embed, resize_text_pos_embed
from torch import nn

from bike.config import DEFAULT_PROMPT

log = logging.getLogger(__name__)

#: Directory of the tiny model configs (``bike-tiny``: 64 wide, ``bike-micro``: 32 wide) registered
#: with open_clip when this module is imported.
MODEL_CONFIG_DIR: Path = Path(__file__).resolve().parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

#: The BIKE category prompt (``ModelConfig.prompt``).
DEFAULT_TEMPLATE = DEFAULT_PROMPT

# Keys OpenAI's TorchScript checkpoints carry that are not parameters.
_JIT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
_STATE_DICT_PREFIX = "module."


class PretrainedUnavailableError(RuntimeError):
    """The requested pretrained weights cannot be had (offline, not cached, or a download error)."""


@dataclass
class TextFeatures:
    """Text-tower output for K prompts of L positions.

    Attributes:
        cls: ``[K, D]`` the projected feature at the end-of-text position ([CLS] embedding).
        tokens: ``[K, L, D]`` the projected feature at every position.
    """

    cls: torch.Tensor
    tokens: torch.Tensor

    def to(self, *args: Any, **kwargs: Any) -> "TextFeatures":
        return TextFeatures(self.cls.to(*args, **kwargs), self.tokens.to(*args, **kwargs))

    def detach(self) -> "TextFeatures":
        return TextFeatures(self.cls.detach(), self.tokens.detach())


# ---------------------------------------------------------------------------------------- loading
def _is_torchscript_archive(path: Path) -> bool:
    """True for a TorchScript zip (OpenAI's original CLIP release), which holds ``constants.pkl``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") for n in zf.namelist())


def read_checkpoint_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], bool]:
    """Read a CLIP state dict from a local file.

    Accepts a raw state dict, ``{"state_dict": sd}``, DataParallel/DDP ``module.`` prefixes, and
    OpenAI's TorchScript archives.

    Returns:
        ``(state_dict, is_openai_torchscript)``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    is_jit = _is_torchscript_archive(path)
    if is_jit:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still reads
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        for key in _JIT_EXTRA_KEYS:
            state.pop(key, None)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors, truncated files
            raise ValueError(f"{path}: not a readable torch checkpoint ({exc})") from exc
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: expected a state dict (or {{'state_dict': ...}}), got {type(state).__name__}")
    state = {
        (k[len(_STATE_DICT_PREFIX):] if k.startswith(_STATE_DICT_PREFIX) else k): v for k, v in state.items()
    }
    return state, is_jit


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _unavailable(name: str, tag: str, reason: str) -> PretrainedUnavailableError:
    mode = "HF_HUB_OFFLINE is set and the weights are not cached" if _offline() else "they could not be downloaded"
    return PretrainedUnavailableError(
        f"pretrained weights '{tag}' for model '{name}' are unavailable: {mode} ({reason}). "
        f"Download them once elsewhere and pass the local checkpoint file path as `pretrained` "
        f"(model.pretrained in the run config), e.g. pretrained='/path/to/{name}-{tag}.pt'."
    )


def load_clip(
    name: str,
    pretrained: Optional[str] = None,
    device: str | torch.device = "cpu",
    *,
    quick_gelu: Optional[bool] = None,
    image_size: Optional[int] = None,
) -> "ClipBackbone":
    """Build an open_clip model by name and wrap it.

    Args:
        name: an open_clip model name (``ViT-B-32``, ``ViT-L-14-336``, ``bike-tiny``...).
        pretrained: an open_clip tag, a local checkpoint file, or ``None`` for random weights.
        device: where the model lives.
        quick_gelu: QuickGELU on/off. ``None``: the tag's own setting (``openai`` weights were
            trained with QuickGELU); for a file, QuickGELU when it is OpenAI's TorchScript release or
            its file name or hub cache folder mentions ``openai`` (the hub's
            ``models--timm--vit_base_patch32_clip_224.openai/.../open_clip_pytorch_model.bin``), else the
            model config's (``ViT-B-32-quickgelu`` names a QuickGELU config explicitly).
        image_size: input resolution when it differs from the config (position embeddings of a
            checkpoint are interpolated).

    Raises:
        PretrainedUnavailableError: a tag whose weights cannot be had offline; the message says to
            pass a local checkpoint file.
        ValueError: unknown model name, a tag/path that is neither, or a checkpoint that does not fit.
    """
    if open_clip.get_model_config(name.replace("/", "-")) is None:
        raise ValueError(f"unknown open_clip model '{name}'; known models: {', '.join(open_clip.list_models())}")
    kwargs: dict[str, Any] = {"device": device}
    if image_size is not None:
        kwargs["force_image_size"] = image_size
    if pretrained is None:
        model = open_clip.create_model(name, pretrained=None, **kwargs, **_gelu_kwargs(quick_gelu))
    elif open_clip.get_pretrained_cfg(name.replace("/", "-"), pretrained):
        tag_cfg = open_clip.get_pretrained_cfg(name.replace("/", "-"), pretrained)
        # the tag's QuickGELU (openai) wins over the config; otherwise the config's own activation
        use_quick = (True if tag_cfg.get("quick_gelu", False) else None) if quick_gelu is None else quick_gelu
        try:
            model = open_clip.create_model(name, pretrained=pretrained, **kwargs, **_gelu_kwargs(use_quick))
        except Exception as exc:  # offline, network, hub or checksum errors
            raise _unavailable(name, pretrained, str(exc).splitlines()[0][:300]) from exc
    elif os.path.isfile(pretrained):
        state, is_jit = read_checkpoint_state_dict(pretrained)
        use_quick = quick_gelu
        if use_quick is None and (is_jit or _names_openai_weights(pretrained)):
            log.info("%s: OpenAI CLIP weights, using QuickGELU (pass quick_gelu=False to override)", pretrained)
            use_quick = True
        # open_clip warns "No pretrained weights loaded ... initialized randomly" for this skeleton; the
        # weights are the file's, loaded on the next line, so say that instead
        log.info("%s: building %s and loading its weights from this checkpoint file", pretrained, name)
        with _quiet_random_init():
            model = open_clip.create_model(name, pretrained=None, **kwargs, **_gelu_kwargs(use_quick))
        _load_state_dict_into(model, state, pretrained)
    else:
        tags = open_clip.list_pretrained_tags_by_model(name.replace("/", "-"))
        raise ValueError(
            f"pretrained='{pretrained}' for model '{name}' is neither an open_clip tag "
            f"(known tags: {', '.join(tags) or 'none'}) nor an existing checkpoint file"
        )
    return ClipBackbone(model, open_clip.get_tokenizer(name.replace("/", "-")), name=name)


class _NoRandomInitWarning(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded ... initialized randomly" (logged on the root logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init():
    """Around an ``open_clip.create_model(pretrained=None)`` whose weights are loaded right after."""
    quiet, root = _NoRandomInitWarning(), logging.getLogger()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def _names_openai_weights(path: str | Path) -> bool:
    """True when the file name, or the hub cache folder (``models--org--name``) it sits in, says openai."""
    parts = Path(path).parts
    named = [parts[-1]] + [p for p in parts if p.startswith("models--")]
    return any("openai" in p.lower() for p in named)


def _gelu_kwargs(quick_gelu: Optional[bool]) -> dict[str, Any]:
    """create_model arguments that force QuickGELU on (True), off (False), or keep the config (None)."""
    if quick_gelu is None:
        return {}
    return {"force_quick_gelu": True} if quick_gelu else {"quick_gelu": False}


def _load_state_dict_into(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load ``state`` strictly (interpolating position embeddings); errors name the file."""
    persistent = set(model.state_dict())
    for key in [n for n, _ in model.named_buffers() if n not in persistent]:
        state.pop(key, None)  # non-persistent buffers (the causal mask) some exports carry
    try:
        if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
            state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
        resize_pos_embed(state, model)
        resize_text_pos_embed(state, model)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, AssertionError, ValueError) as exc:
        first = str(exc).splitlines()[:3]
        raise ValueError(f"{source}: checkpoint does not fit this model: {' '.join(first)[:600]}") from exc


def load_clip_from_config(model_cfg: Any, device: str | torch.device = "cpu") -> "ClipBackbone":
    """``load_clip`` from a :class:`bike.config.ModelConfig` (backbone, pretrained, resolution)."""
    cfg = open_clip.get_model_config(model_cfg.backbone.replace("/", "-"))
    native = cfg["vision_cfg"].get("image_size") if cfg else None
    size = None if native == model_cfg.resolution else model_cfg.resolution
    backbone = load_clip(model_cfg.backbone, model_cfg.pretrained, device, image_size=size)
    set_category_encoder_trainable(backbone, model_cfg.finetune_category_encoder)
    backbone.set_grad_checkpointing(model_cfg.activation_checkpointing)
    return backbone


# --------------------------------------------------------------------------------------- backbone
class ClipBackbone(nn.Module):
    """An open_clip model and its tokenizer, with the per-position text features BIKE needs.

    Attributes:
        model: the open_clip model (``CLIP`` or ``CustomTextCLIP`` with a transformer text tower).
        tokenizer: its tokenizer (``tokenizer(list[str]) -> [K, L]``).
        image_mean, image_std: the input normalisation (CLIP's statistics).
        image_size: input side in pixels. embed_dim: D. text_width, vision_width: tower widths.
    """

    def __init__(self, model: nn.Module, tokenizer: Callable[..., torch.Tensor], name: str = "") -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        # Kept out of the module registry: the tower already lives inside ``self.model``, so registering it
        # again would list every text weight twice in state_dict() and in checkpoints.
        object.__setattr__(self, "_text_tower", self._find_text_tower(model))
        pre = getattr(model.visual, "preprocess_cfg", None) or {}
        self.image_mean: tuple[float, ...] = tuple(pre.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.image_std: tuple[float, ...] = tuple(pre.get("std", open_clip.OPENAI_DATASET_STD))
        size = getattr(model.visual, "image_size", None)
        self.image_size: int = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.text_width: int = int(self._text.ln_final.weight.shape[0])
        self.vision_width: int = _vision_width(model.visual)
        proj = self._text.text_projection
        if proj is None:
            self.embed_dim = self.text_width
        elif isinstance(proj, nn.Linear):
            self.embed_dim = int(proj.out_features)
        else:
            self.embed_dim = int(proj.shape[1])
        self.context_length: int = int(self._text.positional_embedding.shape[0])

    @staticmethod
    def _find_text_tower(model: nn.Module) -> nn.Module:
        """The module holding token_embedding / transformer / ln_final / text_projection."""
        tower = model if hasattr(model, "token_embedding") else getattr(model, "text", None)
        needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
        if tower is None or not all(hasattr(tower, a) for a in needed):
            raise ValueError(
                f"{type(model).__name__}: per-token text features need a CLIP transformer text tower "
                f"(attributes {needed}); this model's text tower is not supported"
            )
        if getattr(tower, "cls_emb", None) is not None:
            raise ValueError(f"{type(model).__name__}: text towers with an appended CLS embedding are not supported")
        return tower

    @property
    def _text(self) -> nn.Module:
        return self._text_tower

    # ---------------------------------------------------------------- parameters
    def text_parameters(self) -> Iterable[nn.Parameter]:
        """The parameters of the text tower (the category encoder)."""
        t = self._text
        if t is not self.model:
            yield from t.parameters()
            return
        for mod in (t.token_embedding, t.transformer, t.ln_final):
            yield from mod.parameters()
        yield t.positional_embedding
        if isinstance(t.text_projection, nn.Module):
            yield from t.text_projection.parameters()
        elif t.text_projection is not None:
            yield t.text_projection

    def visual_parameters(self) -> Iterable[nn.Parameter]:
        """The parameters of the image tower."""
        return self.model.visual.parameters()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing in both towers (``ModelConfig.activation_checkpointing``)."""
        self.model.set_grad_checkpointing(enable)

    # ---------------------------------------------------------------- encoders
    def encode_frames(self, x: torch.Tensor) -> torch.Tensor:
        """Image tower on every frame.

        Args:
            x: ``[B, T, 3, H, W]`` normalised frames.
        Returns:
            ``[B, T, D]`` raw (unnormalised) image embeddings.
        """
        if x.ndim != 5:
            raise ValueError(f"encode_frames expects [B, T, 3, H, W], got shape {tuple(x.shape)}")
        b, t = x.shape[:2]
        emb = self.model.encode_image(x.flatten(0, 1))
        return emb.reshape(b, t, -1)

    def encode_text(self, tokens: torch.Tensor) -> TextFeatures:
        """Text tower output at every position and at the end-of-text position.

        Args:
            tokens: ``[K, L]`` token ids.
        Returns:
            ``TextFeatures(cls[K, D], tokens[K, L, D])``: token_embedding + positional_embedding →
            transformer (causal mask) → ln_final → text projection; ``cls`` is the end-of-text position
            (the argmax token id), which equals ``model.encode_text(tokens)``.
        """
        t = self._text
        cast_dtype = t.transformer.get_cast_dtype()
        x = t.token_embedding(tokens).to(cast_dtype)
        x = x + t.positional_embedding.to(cast_dtype)
        x = t.transformer(x, attn_mask=t.attn_mask)
        x = t.ln_final(x)
        proj = t.text_projection
        if isinstance(proj, nn.Linear):
            x = proj(x)
        elif proj is not None:
            x = x @ proj
        eot = self._eot_positions(tokens)
        cls = x[torch.arange(x.shape[0], device=x.device), eot]
        return TextFeatures(cls=cls, tokens=x)

    def _eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        tower = self._text  # CLIP keeps text_pool_type/text_eos_id, a TextTransformer pool_type/eos_id
        pool = getattr(tower, "text_pool_type", None) or getattr(tower, "pool_type", "argmax")
        if pool == "argmax":
            return tokens.argmax(dim=-1)
        if pool == "eos":
            eos = getattr(tower, "text_eos_id", None)
            eos = getattr(tower, "eos_id", None) if eos is None else eos
            return (tokens == eos).int().argmax(dim=-1)
        if pool == "last":
            return torch.full((tokens.shape[0],), tokens.shape[1] - 1, device=tokens.device, dtype=torch.long)
        if pool == "first":
            return torch.zeros(tokens.shape[0], device=tokens.device, dtype=torch.long)
        raise ValueError(f"text pool type '{pool}' has no single [CLS] position")

    # ---------------------------------------------------------------- prompts
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """``[K, L]`` long token ids of ``texts``."""
        return self.tokenizer(list(texts)).long()

    def tokenize_prompts(
        self, class_names: Sequence[str], template: str = DEFAULT_TEMPLATE
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize ``template.format(name)`` for every class and mark the class-name positions.

        Returns:
            ``(tokens[K, L] long, word_mask[K, L] bool)``; ``word_mask`` is True at the BPE tokens of
            the class name inside the prompt (found by tokenizing the name alone and locating its
            tokens in the prompt, at or after the template's prefix).
        """
        if "{}" not in template:
            raise ValueError(f"prompt template {template!r} has no '{{}}' placeholder for the class name")
        names = list(class_names)
        tokens = self.tokenize([template.format(n) for n in names])
        alone = self.tokenize(names)
        prefix = template.split("{}")[0]
        prefix_len = len(self._content_ids(self.tokenize([prefix])[0])) if prefix.strip() else 0
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        for k, name in enumerate(names):
            word_ids = self._content_ids(alone[k])
            if not word_ids:
                raise ValueError(f"class name {name!r} tokenizes to no word tokens")
            start = _locate(tokens[k].tolist(), word_ids, min_start=prefix_len)
            if start is None:
                raise ValueError(
                    f"could not find the tokens of class name {name!r} inside the prompt "
                    f"{template.format(name)!r} (truncated past {tokens.shape[1]} tokens, or the template "
                    f"glues the name to other letters)"
                )
            mask[k, start : start + len(word_ids)] = True
        return tokens, mask

    def _content_ids(self, ids: torch.Tensor) -> list[int]:
        """Token ids of one tokenized text without start, end and padding tokens."""
        special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        for attr in ("sot_token_id", "eot_token_id", "pad_token_id"):
            val = getattr(self.tokenizer, attr, None)
            if val is not None:
                special.add(int(val))
        special.add(0)
        return [int(i) for i in ids.tolist() if int(i) not in special]


def _locate(seq: list[int], sub: list[int], min_start: int = 0) -> Optional[int]:
    """First start index of ``sub`` in ``seq`` at or after ``min_start`` (else anywhere), or None."""
    hits = [i for i in range(len(seq) - len(sub) + 1) if seq[i : i + len(sub)] == sub]
    if not hits:
        return None
    later = [i for i in hits if i >= min_start]
    return later[0] if later else hits[0]


def _vision_width(visual: nn.Module) -> int:
    """Width of the image tower's residual stream."""
    for path in ("transformer.width", "trunk.num_features", "width"):
        obj: Any = visual
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return int(obj)
        except AttributeError:
            continue
    return int(getattr(visual, "output_dim", 0))


# ------------------------------------------------------------------------------ category encoder
def set_category_encoder_trainable(backbone: ClipBackbone, trainable: bool) -> None:
    """Freeze (the published default) or unfreeze the text tower, the category encoder.

    Call with ``ModelConfig.finetune_category_encoder``; the image tower is left as it is.
    """
    for p in backbone.text_parameters():
        p.requires_grad_(trainable)

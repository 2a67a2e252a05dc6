"""The texts the method builds, torch-free: the attribute sentence of a video.

Used by the attributes branch (``bike.attributes``) and by the harness's re-scoring of cached
attributes (``harness.tuning.sentences``), so both build the very same sentence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from bike.config import DEFAULT_NUM_ATTRIBUTES, DEFAULT_PROMPT

#: The released code joins attributes with a bare comma.
DEFAULT_SEPARATOR = ","
#: Directory of the shipped lexicons.
LEXICON_DIR: Path = Path(__file__).resolve().parent / "lexicons"
#: Lexicons by name: the 400 Kinetics-400 classes and the 1000 ImageNet-1K classes (Table 6g).
BUILTIN_LEXICONS: dict[str, Path] = {
    "k400": LEXICON_DIR / "k400.txt",
    "imagenet1k": LEXICON_DIR / "imagenet1k.txt",
}


def lexicon_path(name_or_path: str) -> Path:
    """The file of a lexicon: a built-in name (``k400``, ``imagenet1k``) or a path."""
    return BUILTIN_LEXICONS.get(str(name_or_path), Path(str(name_or_path)).expanduser())


def attribute_sentence(
    phrases: Sequence[str],
    k: int = DEFAULT_NUM_ATTRIBUTES,
    prompt: str = DEFAULT_PROMPT,
    separator: str = DEFAULT_SEPARATOR,
    use_prompt: bool = True,
) -> str:
    """The attribute sentence: ``prompt`` filled with the top-``k`` phrases joined by ``separator``.

    ``attribute_sentence(["juggling soccer ball", "running on the grass", "shooting goal"], 3)`` ->
    ``"This is a video about juggling soccer ball,running on the grass,shooting goal"``.
    """
    if k < 1:
        raise ValueError(f"attribute_sentence: k={k}; expected >= 1")
    joined = separator.join(list(phrases)[:k])
    return prompt.format(joined) if use_prompt else joined

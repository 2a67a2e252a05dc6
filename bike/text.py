"""The texts the method builds, torch-free: the attribute sentence of a video.

Used by the attributes branch (``bike.attributes``) and by the harness's re-scoring of cached
attributes (``harness.tuning.sentences``), so both build the very same sentence.
"""

from __future__ import annotations

from typing import Sequence

from bike.config import DEFAULT_NUM_ATTRIBUTES, DEFAULT_PROMPT

#: The released code joins attributes with a bare comma.
DEFAULT_SEPARATOR = ","


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

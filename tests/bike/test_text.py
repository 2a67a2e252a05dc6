"""bike.text: the attribute sentence, in the released code's format."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bike.text import attribute_sentence

PHRASES = ["juggling soccer ball", "running on the grass", "shooting goal", "extra"]


def test_attribute_sentence_is_the_released_format():
    # the released code: the category prompt followed by the top-k phrases joined by a bare comma
    assert attribute_sentence(PHRASES, 3) == "This is a video about juggling soccer ball,running on the grass,shooting goal"
    assert attribute_sentence(PHRASES) == "This is a video about juggling soccer ball,running on the grass,shooting goal,extra"
    assert attribute_sentence(PHRASES, 1) == "This is a video about juggling soccer ball"
    assert attribute_sentence(PHRASES, 2, use_prompt=False) == "juggling soccer ball,running on the grass"
    assert attribute_sentence(tuple(PHRASES), 2, prompt="A video of {}.", separator=", ") == (
        "A video of juggling soccer ball, running on the grass."
    )
    with pytest.raises(ValueError, match="k=0"):
        attribute_sentence(PHRASES, 0)


def test_both_sides_use_the_one_function_and_it_needs_no_torch():
    import bike.attributes
    import harness.tuning.sentences

    assert bike.attributes.attribute_sentence is attribute_sentence
    assert harness.tuning.sentences.attribute_sentence is attribute_sentence
    code = "import sys, bike.text, bike.rundir; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "False"

"""What a world build says while it runs: timestamped stage lines, and a bar for the pretraining on a terminal.

``build_world(progress=None)`` uses :class:`BuildProgress`: every message becomes one line
``[12:03:04 +1m05s] world: <message>`` on stderr (a log file gets plain lines), so the minutes of a
default build are never silent; on a terminal the tiny CLIP's pretraining steps (``pretrain step
k/N loss x``) move one tqdm bar instead of printing a line each.
"""

from __future__ import annotations

import re
import sys
import time
from typing import Any, Optional, TextIO

_STEP = re.compile(r"^pretrain step (\d+)/(\d+) loss ([0-9.naninf+-]+)")


class BuildProgress:
    """Callable ``progress(message)`` of :func:`bike.world.build_world` (see the module docstring).

    Args:
        stream: where lines go (default stderr).
        bar: a tqdm bar for the pretraining steps; ``None``: when ``stream`` is a terminal.
    """

    def __init__(self, stream: Optional[TextIO] = None, bar: Optional[bool] = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.use_bar = bool(isatty and isatty()) if bar is None else bar
        self.t0 = time.time()
        self._bar: Any = None

    def line(self, message: str) -> str:
        """``[HH:MM:SS +elapsed] world: message``."""
        elapsed = int(time.time() - self.t0)
        return f"[{time.strftime('%H:%M:%S')} +{elapsed // 60}m{elapsed % 60:02d}s] world: {message}"

    def __call__(self, message: str) -> None:
        m = _STEP.match(message)
        if m and self.use_bar:
            step, total = int(m.group(1)), int(m.group(2))
            if self._bar is None:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total, desc="world: pretraining the tiny CLIP", unit="step", file=self.stream,
                                 dynamic_ncols=True, leave=False)
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix_str(f"loss {m.group(3)}")
            if step >= total:
                self.close()
            return
        if self._bar is not None:
            self._bar.clear()
        print(self.line(message), file=self.stream, flush=True)
        if self._bar is not None:
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

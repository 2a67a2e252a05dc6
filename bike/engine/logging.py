"""Run logging: ``log.txt``, ``metrics.jsonl``, and progress on the terminal.

Only rank 0 writes files. Progress shows as tqdm bars when stderr is a terminal (or ``progress=True``),
as plain log lines otherwise (batch jobs, SLURM logs).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

from bike.rundir import LOG_FILE, METRICS_FILE
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

MetricsCallback = Callable[[dict, int], None]


def _clean(value: Any) -> Any:
    """JSON-safe value: floats stay floats (NaN/inf become None), numpy/torch scalars unwrap."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float):
        return None if not math.isfinite(value) else float(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def clean_metrics(metrics: dict) -> dict:
    """Public form of :func:`_clean` for result files."""
    return _clean(metrics)


class RunLogger:
    """Writes the log and metrics of one run directory (rank 0 only) and drives progress display.

    Args:
        run_dir: the run directory.
        is_main: whether this process writes files.
        progress: tqdm bars (True), log lines (False), or decide from ``sys.stderr.isatty()`` (None).
        on_metrics: called with ``(metrics, step)`` for every :meth:`metrics` record on rank 0.
    """

    def __init__(
        self,
        run_dir: str | Path,
        is_main: bool = True,
        progress: Optional[bool] = None,
        on_metrics: Optional[MetricsCallback] = None,
        name: str = "bike",
    ) -> None:
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self.progress = sys.stderr.isatty() if progress is None else bool(progress)
        self.on_metrics = on_metrics
        self.logger = logging.getLogger(f"{name}.{self.run_dir.name}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        self._handlers: list[logging.Handler] = []
        if is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(self.run_dir / LOG_FILE, mode="a")
            fh.setFormatter(logging.Formatter(LOG_FORMAT))
            self._handlers.append(fh)
            if not self.progress:
                sh = logging.StreamHandler(sys.stderr)
                sh.setFormatter(logging.Formatter(LOG_FORMAT))
                self._handlers.append(sh)
        for h in self._handlers:
            self.logger.addHandler(h)

    def info(self, msg: str, *args: Any) -> None:
        if self.is_main:
            self.logger.info(msg, *args)

    def warning(self, msg: str, *args: Any) -> None:
        if self.is_main:
            self.logger.warning(msg, *args)

    def metrics(self, record: dict, step: int) -> None:
        """Append one JSON line ``{"step": step, "time": ..., **record}`` and call ``on_metrics``."""
        if not self.is_main:
            return
        line = {"step": int(step), "time": time.time(), **_clean(record)}
        with open(self.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")
        if self.on_metrics is not None:
            self.on_metrics(dict(record), int(step))

    def iterate(self, iterable: Iterable, total: Optional[int], desc: str, every: int = 50) -> Iterator:
        """Wrap an iterable with a tqdm bar, or log a line every ``every`` items."""
        if self.is_main and self.progress:
            from tqdm.auto import tqdm

            yield from tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
            return
        start = time.time()
        for i, item in enumerate(iterable):
            if self.is_main and every and i % every == 0:
                self.logger.info("%s: %d/%s (%.1fs)", desc, i, total if total is not None else "?", time.time() - start)
            yield item

    def close(self) -> None:
        for h in self._handlers:
            h.close()
            self.logger.removeHandler(h)
        self._handlers = []

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def metrics_size(run_dir: str | Path) -> int:
    """Bytes of ``metrics.jsonl`` now (0 when absent): stored in each checkpoint."""
    path = Path(run_dir) / METRICS_FILE
    return path.stat().st_size if path.is_file() else 0


def truncate_metrics(run_dir: str | Path, size: int) -> int:
    """Cut ``metrics.jsonl`` back to its first ``size`` bytes (what a checkpoint saw); returns the
    number of lines dropped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file() or path.stat().st_size <= size:
        return 0
    data = path.read_bytes()
    dropped = data[size:].count(b"\n")
    with open(path, "r+b") as f:
        f.truncate(size)
    return dropped


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``metrics.jsonl`` (empty when absent)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

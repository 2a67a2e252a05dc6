"""The video dataset: records -> sampled, decoded, transformed clips; bad videos are counted, never replaced.

``VideoDataset(records, cfg, train, views=(clips, crops))`` has one item per (video, view):
``len = num_videos * clips * crops`` and item ``i`` is view ``i % V`` of video ``i // V``, with
``view_index = clip * crops + crop``. An item is a :class:`VideoItem` that unpacks like the tuple
``(clip float [T, 3, S, S], label, video_id, view_index)``; ``label`` is the class index (``int``) or,
for multi-label data, a multi-hot ``float [K]`` tensor.

A video that cannot be read (:class:`~bike.data.decode.BadVideoError`: missing, zero-length,
truncated, undecodable, frame directory short of frames) yields a :class:`BadItem` instead. The
loader's collate drops it and carries it in the batch, and :class:`BadVideoLog` counts it in the main
process (so counting works with any number of DataLoader workers):

* training: skip, count, log the path; raise :class:`BadDataError` once more than
  ``cfg.data.bad_video_threshold`` of the dataset's videos are bad;
* evaluation: raise :class:`BadDataError` listing every bad file at the end of the pass, unless
  ``cfg.data.skip_bad_eval``, in which case they are skipped and reported
  (``{"evaluated": n, "skipped": m, "bad_files": [...]}``).

In evaluation all clips of a video are decoded together (one decode, cached for its other views), so
the views of a video are all good or all bad — scores never average over a partial set of views.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from bike.data.decode import BadVideoError, open_video, sample_and_decode
from bike.data.lists import VideoRecord
from bike.data.sampling import tsn_test_indices, tsn_train_indices, view_grid
from bike.data.transforms import CLIP_MEAN, CLIP_STD, test_transform, train_transform

_log = logging.getLogger(__name__)

#: Seeds drawn for each training item come from [0, SEED_SPACE).
SEED_SPACE = 2**62
#: Bad files named in an error message (the full list is in the report).
MAX_LISTED = 20


class BadDataError(RuntimeError):
    """Too many bad videos in training, or bad videos in a strict evaluation; names the files."""


@dataclass(frozen=True)
class BadItem:
    """Placeholder for an item whose video could not be read."""

    video_id: str
    path: str
    reason: str


@dataclass
class VideoItem:
    """One (video, view): unpacks as ``(clip, label, video_id, view)``; ``fallback`` names a decoder fallback."""

    clip: torch.Tensor
    label: Union[int, torch.Tensor]
    video_id: str
    view: int
    path: str = ""
    fallback: Optional[str] = None
    #: the video's frame count when it has fewer frames than the clip (its frames are repeated)
    short_of: Optional[int] = None

    def _as_tuple(self) -> tuple:
        return (self.clip, self.label, self.video_id, self.view)

    def __iter__(self) -> Iterator:
        return iter(self._as_tuple())

    def __getitem__(self, i: int) -> Any:
        return self._as_tuple()[i]

    def __len__(self) -> int:
        return 4


@dataclass
class BadVideoLog:
    """Counts good and bad videos of one pass over a dataset (lives in the main process).

    ``total``: number of videos in the dataset (the threshold's denominator).
    """

    total: int
    threshold: float = 0.01
    train: bool = True
    skip_bad_eval: bool = False
    good: set = field(default_factory=set)
    bad: dict = field(default_factory=dict)  # video_id -> BadItem
    fallbacks: dict = field(default_factory=dict)  # path -> reason
    padded: dict = field(default_factory=dict)  # path -> frame count, videos shorter than the clip
    unknown_dropped: int = 0

    def record_good(self, video_id: str) -> None:
        self.good.add(video_id)

    def record_fallback(self, path: str, reason: str) -> None:
        self.fallbacks.setdefault(path, reason)

    def record_padded(self, path: str, num_frames: int) -> None:
        """A video with fewer frames than the clip: its frames are repeated (logged once per file)."""
        if path not in self.padded:
            self.padded[path] = int(num_frames)
            _log.warning("short video padded: %s has %d frame(s); its frames are repeated to fill the clip", path, num_frames)

    def record_bad(self, item: BadItem) -> None:
        """Count a bad video (once per id), log it, and in training enforce the threshold."""
        if item.video_id in self.bad:
            return
        self.bad[item.video_id] = item
        _log.warning("bad video skipped: %s (%s)", item.path, item.reason)
        if self.train and len(self.bad) > self.threshold * self.total:
            raise BadDataError(
                f"{len(self.bad)} of {self.total} training videos are bad "
                f"({len(self.bad) / max(self.total, 1):.2%} > data.bad_video_threshold={self.threshold:.2%}); "
                f"fix or remove them from the list:\n" + self._listing()
            )

    def update(self, batch: "Any") -> None:
        """Count one collated batch (``bad``, ``video_ids``, ``paths`` and ``fallbacks`` attributes)."""
        self.unknown_dropped += getattr(batch, "num_none", 0)
        for path, reason in getattr(batch, "fallbacks", ()):
            self.record_fallback(path, reason)
        for path, n in getattr(batch, "padded", ()):
            self.record_padded(path, n)
        for vid in batch.video_ids:
            self.record_good(vid)
        for item in batch.bad:
            self.record_bad(item)

    def end_of_pass(self) -> None:
        """In a strict evaluation, raise listing every bad file seen."""
        if not self.train and self.bad and not self.skip_bad_eval:
            raise BadDataError(
                f"evaluation met {len(self.bad)} bad video(s) of {self.total}; fix them, or set "
                f"data.skip_bad_eval: true to skip and report them:\n" + self._listing()
            )

    def reset(self) -> None:
        self.good.clear()
        self.bad.clear()

    def _listing(self) -> str:
        items = list(self.bad.values())
        lines = [f"  {b.path}: {b.reason}" for b in items[:MAX_LISTED]]
        if len(items) > MAX_LISTED:
            lines.append(f"  ... and {len(items) - MAX_LISTED} more")
        return "\n".join(lines)

    @property
    def bad_files(self) -> list[str]:
        return sorted({b.path for b in self.bad.values()})

    def report(self) -> dict:
        """``{"evaluated": n, "skipped": m, "bad_files": [...], "decoder_fallbacks": [...], "padded": p,
        "padded_files": [...]}`` (padded: videos with fewer frames than the clip, frames repeated)."""
        return {
            "evaluated": len(self.good - set(self.bad)),
            "skipped": len(self.bad),
            "bad_files": self.bad_files,
            "decoder_fallbacks": sorted(self.fallbacks),
            "padded": len(self.padded),
            "padded_files": sorted(self.padded),
        }

    @staticmethod
    def merge_reports(reports: Iterable[dict]) -> dict:
        """Combine the reports of several processes (e.g. distributed ranks) with disjoint videos."""
        out = {"evaluated": 0, "skipped": 0, "bad_files": set(), "decoder_fallbacks": set(), "padded_files": set()}
        for r in reports:
            out["evaluated"] += int(r["evaluated"])
            out["skipped"] += int(r["skipped"])
            out["bad_files"].update(r["bad_files"])
            out["decoder_fallbacks"].update(r.get("decoder_fallbacks", ()))
            out["padded_files"].update(r.get("padded_files", ()))
        for key in ("bad_files", "decoder_fallbacks", "padded_files"):
            out[key] = sorted(out[key])
        out["padded"] = len(out["padded_files"])
        return out


class VideoDataset(Dataset):
    """Clips of ``records`` for training (TSN random sampling + augmentation) or evaluation (views).

    cfg: a ``bike.config.RunConfig`` (model.frames, model.resolution, short_side, train.* augmentation,
    eval.single_view_frame/clips/crops, data.decoder/frame_template/bad_video_threshold/skip_bad_eval).
    views: (clips, crops); default (1, 1) in training, (eval.clips, eval.crops) in evaluation.
    num_classes: needed for multi-label records (multi-hot labels ``float [K]``).
    mean, std: image normalisation (default CLIP's).
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        cfg,
        train: bool,
        views: Optional[tuple[int, int]] = None,
        num_classes: Optional[int] = None,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        self.records = list(records)
        if not self.records:
            raise ValueError("VideoDataset: no records")
        self.train = bool(train)
        if views is None:
            views = (1, 1) if self.train else (cfg.eval.clips, cfg.eval.crops)
        self.clips, self.crops = int(views[0]), int(views[1])
        if self.train and (self.clips, self.crops) != (1, 1):
            raise ValueError(f"training uses one view per video; got views={views}")
        self.grid = view_grid(self.clips, self.crops)
        self.frames = cfg.model.frames
        self.frame_mode = cfg.eval.single_view_frame
        self.backend = cfg.data.decoder
        self.frame_template = cfg.data.frame_template
        self.multi_label = any(r.is_multi_label for r in self.records)
        if self.multi_label and not num_classes:
            raise ValueError("VideoDataset: multi-label records need num_classes (the multi-hot label width K)")
        self.num_classes = num_classes
        self.train_transform = train_transform(cfg, mean, std) if self.train else None
        self.test_transforms = {pos: test_transform(cfg, pos, self.crops, mean, std) for _, pos in self.grid}
        self.bad_log = BadVideoLog(
            total=len(self.records),
            threshold=cfg.data.bad_video_threshold,
            train=self.train,
            skip_bad_eval=cfg.data.skip_bad_eval,
        )
        self._cache_key: Optional[int] = None
        self._cache_frames: Optional[np.ndarray] = None
        self._cache_fallback: Optional[str] = None

    # ------------------------------------------------------------------ sizes
    @property
    def num_views(self) -> int:
        return self.clips * self.crops

    @property
    def num_videos(self) -> int:
        return len(self.records)

    def __len__(self) -> int:
        return len(self.records) * self.num_views

    def locate(self, index: int) -> tuple[int, int]:
        """Item ``index`` -> (video index, view index)."""
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} outside 0..{len(self) - 1}")
        return divmod(index, self.num_views)

    # ------------------------------------------------------------------ items
    def label_of(self, record: VideoRecord) -> Union[int, torch.Tensor]:
        if not self.multi_label:
            return int(record.label)
        target = torch.zeros(self.num_classes, dtype=torch.float32)
        classes = record.label if isinstance(record.label, tuple) else (record.label,)
        if classes:
            target[list(classes)] = 1.0
        return target

    def __getitem__(self, index: int) -> Union[VideoItem, BadItem]:
        vi, view = self.locate(index)
        record = self.records[vi]
        try:
            if self.train:
                clip, fallback, n = self._train_clip(record)
            else:
                clip, fallback, n = self._test_clip(vi, record, view)
        except BadVideoError as exc:
            return BadItem(video_id=record.video_id, path=exc.path, reason=exc.reason)
        short = n if n < self.frames else None
        return VideoItem(clip, self.label_of(record), record.video_id, view, record.path, fallback, short)

    def _train_clip(self, record: VideoRecord) -> tuple[torch.Tensor, Optional[str], int]:
        """(clip, decoder fallback, the video's frame count)."""
        # One seed per item from the process's torch RNG (seeded per worker by the DataLoader).
        seed = int(torch.randint(0, SEED_SPACE, (), dtype=torch.int64))
        gen = torch.Generator().manual_seed(seed)
        count: list[int] = []

        def choose(n: int) -> np.ndarray:
            count.append(n)
            return tsn_train_indices(n, self.frames, gen)

        frames, _, src = sample_and_decode(record, choose, self.backend, self.frame_template)
        return self.train_transform(frames, gen), src.fallback_reason, count[0]

    def _test_clip(self, vi: int, record: VideoRecord, view: int) -> tuple[torch.Tensor, Optional[str], int]:
        """(clip of one view, decoder fallback, the video's frame count); decodes once per video."""
        if self._cache_key != vi:
            self._cache_key = None  # never reuse a half-filled cache after an error
            count: list[int] = []

            def choose(n: int) -> np.ndarray:
                count.append(n)
                return np.concatenate(
                    [tsn_test_indices(n, self.frames, self.frame_mode, c, self.clips) for c in range(self.clips)]
                )

            frames, _, src = sample_and_decode(record, choose, self.backend, self.frame_template)
            self._cache_key, self._cache_frames, self._cache_fallback = vi, frames, src.fallback_reason
            self._cache_count = count[0]
        clip_index, position = self.grid[view]
        t = self.frames
        frames = self._cache_frames[clip_index * t : (clip_index + 1) * t]
        return self.test_transforms[position](frames), self._cache_fallback, self._cache_count


def find_bad_videos(
    records: Sequence[VideoRecord], backend: str = "decord", frame_template: str = "img_{:05d}.jpg"
) -> list[BadItem]:
    """Open every record (container headers / frame counts only, no full decode): the ones that fail.

    A quick pre-flight check; files damaged further in are still caught while decoding.
    """
    bad = []
    for r in records:
        try:
            with open_video(r, backend, frame_template):
                pass
        except BadVideoError as exc:
            bad.append(BadItem(r.video_id, exc.path, exc.reason))
    return bad

"""Writing real video files (H.264 in an mp4 container) with PyAV.

Used by the miniature video world and by tests that need real videos on disk. ``lossless=True`` encodes
with x264's RGB variant (libx264rgb, rgb24) at qp=0, so decoded frames equal the frames written bit for bit (a test can assert
that the frame decoded is exactly the frame asked for). The lossy default (yuv420p, crf 18) is what a
real dataset looks like.

Both encodings are deterministic: the same frames give the same bytes, so a world rebuilt anywhere has
the same videos and the same numbers. x264's macroblock-tree rate control (``mbtree``, on in every
preset above ultrafast) was seen to give different bytes for the same frames from one call to the next
here (decoded pixels off by up to 27 levels), so it is off (``LOSSY_X264_PARAMS``); bump
``ENCODER_VERSION`` whenever these settings change, so that worlds written before are rebuilt.

Pitfall seen here: decord 0.6 fails to copy out frames of some small widths (16 and 48 px fail, 32, 64,
80, 96, 112 and 320 work) with "DECORDArrayCopyFromTo: The size must exactly match"; PyAV reads them.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Identity of the encoder settings below (part of a world's config hash).
ENCODER_VERSION = 2
#: Lossy: constant rate factor 18, no macroblock tree (it made x264's output nondeterministic).
LOSSY_X264_OPTIONS = {"crf": "18", "preset": "veryfast", "x264-params": "mbtree=0"}
#: Lossless: RGB x264 at qp 0.
LOSSLESS_X264_OPTIONS = {"qp": "0", "preset": "ultrafast"}

import numpy as np

from bike.rundir import atomic_path


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int = 10, lossless: bool = False) -> Path:
    """Write ``frames`` (uint8 ``[T,H,W,3]`` RGB, H and W even) as an H.264 mp4; returns the path.

    The file is written atomically (``bike.rundir.atomic_path``), so a crash never leaves a
    half-written video under the final name.
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"write_mp4({path}): frames must be uint8 [T,H,W,3], got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if t == 0:
        raise ValueError(f"write_mp4({path}): no frames")
    if h % 2 or w % 2:
        raise ValueError(f"write_mp4({path}): H and W must be even for H.264, got {h}x{w}")
    path = Path(path)
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264rgb" if lossless else "libx264", rate=fps)
        stream.width, stream.height = w, h
        if lossless:
            stream.pix_fmt = "rgb24"
            stream.options = dict(LOSSLESS_X264_OPTIONS)
        else:
            stream.pix_fmt = "yuv420p"
            stream.options = dict(LOSSY_X264_OPTIONS)
        stream.codec_context.gop_size = 12
        for frame in frames:
            packet_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in stream.encode(packet_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path

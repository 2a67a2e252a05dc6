"""Vectorised rendering of ToyKinetics frames (numpy only).

A frame is a textured background with up to a few flat-coloured objects drawn over it. Objects are
given per frame as :class:`ObjectSlot` arrays of length N (one slot per object track); a slot that is
absent from a frame has ``visible[n] = False``. Each object may carry a motion trail that makes its
motion visible in a single frame:

* ``TRAIL_TRANSLATE``: fading copies behind the object along ``-(tdx, tdy)``;
* ``TRAIL_SHAKE``: fading copies on both sides along ``(tdx, tdy)``;
* ``TRAIL_GROW``: dark concentric outlines inside the object (it was smaller a moment ago);
* ``TRAIL_SHRINK``: fading concentric outlines outside the object (it was larger a moment ago).

Shapes are drawn from signed distance functions with one pixel of anti-aliasing. Coordinates are in
pixels, ``x`` to the right and ``y`` down.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Shape ids of the renderer (the order of ``SHAPE_IDS`` is fixed; names match ``config.SHAPE_WORDS``).
SHAPE_IDS: dict[str, int] = {"ball": 0, "square": 1, "triangle": 2, "cross": 3}

TRAIL_NONE, TRAIL_TRANSLATE, TRAIL_SHAKE, TRAIL_GROW, TRAIL_SHRINK = 0, 1, 2, 3, 4

#: Opacity of the 1st, 2nd, 3rd copy of a trail.
TRAIL_ALPHAS: tuple[float, ...] = (0.55, 0.35, 0.18)
#: Relative radius step between the concentric outlines of a growing/shrinking object.
SCALE_STEP = 0.22
#: Brightness of the inner outlines of a growing object, relative to its colour.
GROW_OUTLINE_SHADE = 0.35
#: Width (pixels) of an outline.
OUTLINE_WIDTH = 1.3


@dataclass
class ObjectSlot:
    """One object track over N frames (every array has leading length N).

    visible: bool ``[N]``; shape: int ``[N]`` (``SHAPE_IDS``); rgb: float ``[N, 3]`` in 0..255;
    cx, cy, r: float ``[N]`` centre and radius in pixels; trail: int ``[N]`` (``TRAIL_*``);
    tdx, tdy: float ``[N]`` trail step in pixels (direction of motion times spacing).
    """

    visible: np.ndarray
    shape: np.ndarray
    rgb: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    r: np.ndarray
    trail: np.ndarray
    tdx: np.ndarray
    tdy: np.ndarray

    @classmethod
    def empty(cls, n: int) -> "ObjectSlot":
        """A slot with no object in any of the ``n`` frames."""
        return cls(
            visible=np.zeros(n, bool),
            shape=np.zeros(n, np.int64),
            rgb=np.zeros((n, 3), np.float32),
            cx=np.zeros(n, np.float32),
            cy=np.zeros(n, np.float32),
            r=np.ones(n, np.float32),
            trail=np.zeros(n, np.int64),
            tdx=np.zeros(n, np.float32),
            tdy=np.zeros(n, np.float32),
        )

    def __len__(self) -> int:
        return len(self.visible)

    def take(self, idx: np.ndarray) -> "ObjectSlot":
        """The frames ``idx`` of this slot."""
        return ObjectSlot(**{k: v[idx] for k, v in self.__dict__.items()})


# ---------------------------------------------------------------------------------------- shapes
def shape_sdf(shape_id: int, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance (pixels, negative inside) of shape ``shape_id`` of radius ``r``.

    dx, dy: ``[n, H, W]`` offsets from the centre; r: ``[n, 1, 1]``. Returns ``[n, H, W]``.
    """
    if shape_id == SHAPE_IDS["ball"]:
        return np.sqrt(dx * dx + dy * dy) - r
    if shape_id == SHAPE_IDS["square"]:
        return np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * r
    if shape_id == SHAPE_IDS["triangle"]:
        # apex at (0, -r), base corners at (+-0.95 r, 0.75 r)
        half, height = 0.95, 1.75
        slant = (np.abs(dx) * height - (dy + r) * half) / np.hypot(height, half)
        return np.maximum(dy - 0.75 * r, slant)
    if shape_id == SHAPE_IDS["cross"]:
        arm = 0.36 * r
        ax, ay = np.abs(dx), np.abs(dy)
        return np.minimum(np.maximum(ax - arm, ay - r), np.maximum(ax - r, ay - arm))
    raise ValueError(f"shape_sdf: unknown shape id {shape_id}; expected one of {sorted(SHAPE_IDS.values())}")


def _coverage(sdf: np.ndarray, outline: bool) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of the filled shape or of its outline."""
    if outline:
        return np.clip(OUTLINE_WIDTH / 2 + 0.5 - np.abs(sdf), 0.0, 1.0)
    return np.clip(0.5 - sdf, 0.0, 1.0)


def _draw(
    canvas: np.ndarray,
    pad: int,
    idx: np.ndarray,
    shape: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    r: np.ndarray,
    rgb: np.ndarray,
    alpha: float,
    outline: bool = False,
) -> None:
    """Blend a shape into ``canvas[idx]`` in place, touching only a box around each shape.

    canvas: float ``[N, H + 2 pad, W + 2 pad, 3]`` (the frame padded by ``pad`` pixels on each side, so
    boxes never leave it; ``W`` may exceed ``H``); idx, shape, cx, cy, r: ``[n]``; rgb: ``[n, 3]``; coordinates in frame pixels.
    """
    if len(idx) == 0:
        return
    full_h, full_w = canvas.shape[1], canvas.shape[2]
    reach = r * (1.0 + (OUTLINE_WIDTH if outline else 0.0) / np.maximum(r, 1e-3)) + 2.0
    box = int(np.ceil(2 * reach.max())) + 1
    box = min(box, full_h, full_w)
    x0 = np.clip(np.floor(cx + pad - box / 2).astype(np.int64), 0, full_w - box)
    y0 = np.clip(np.floor(cy + pad - box / 2).astype(np.int64), 0, full_h - box)
    steps = np.arange(box)
    rows = y0[:, None] + steps[None, :]  # [n, box] padded coordinates
    cols = x0[:, None] + steps[None, :]
    dy = (rows - pad).astype(np.float32)[:, :, None] - cy[:, None, None]  # [n, box, 1]
    dx = (cols - pad).astype(np.float32)[:, None, :] - cx[:, None, None]  # [n, 1, box]
    dx, dy = np.broadcast_arrays(dx, dy)
    cov = np.empty((len(idx), box, box), np.float32)
    for sid in np.unique(shape):
        sel = shape == sid
        cov[sel] = _coverage(shape_sdf(int(sid), dx[sel], dy[sel], r[sel, None, None]), outline)
    cov = cov[..., None] * alpha
    ii = idx[:, None, None]
    patch = canvas[ii, rows[:, :, None], cols[:, None, :]]
    canvas[ii, rows[:, :, None], cols[:, None, :]] = patch * (1.0 - cov) + rgb[:, None, None, :] * cov


def draw_slot(canvas: np.ndarray, slot: ObjectSlot, pad: int) -> None:
    """Draw one object slot (trail first, then the object) into the padded ``canvas`` in place."""
    vis = np.flatnonzero(slot.visible)
    if len(vis) == 0:
        return
    s = slot.take(vis)
    # copies behind (translate) or on both sides (shake), drawn under the object, farthest first
    for kind in (TRAIL_TRANSLATE, TRAIL_SHAKE):
        sel = s.trail == kind
        if not sel.any():
            continue
        for k in range(len(TRAIL_ALPHAS), 0, -1):
            signs = (1.0,) if kind == TRAIL_TRANSLATE else (1.0, -1.0)
            for sign in signs:
                off = -k * sign if kind == TRAIL_TRANSLATE else k * sign
                _draw(canvas, pad, vis[sel], s.shape[sel], s.cx[sel] + off * s.tdx[sel], s.cy[sel] + off * s.tdy[sel],
                      s.r[sel], s.rgb[sel], TRAIL_ALPHAS[k - 1])
    # larger outlines (shrinking) under the object
    sel = s.trail == TRAIL_SHRINK
    for k in range(len(TRAIL_ALPHAS), 0, -1):
        _draw(canvas, pad, vis[sel], s.shape[sel], s.cx[sel], s.cy[sel], s.r[sel] * (1 + k * SCALE_STEP),
              s.rgb[sel], TRAIL_ALPHAS[k - 1], outline=True)
    _draw(canvas, pad, vis, s.shape, s.cx, s.cy, s.r, s.rgb, 1.0)
    # smaller dark outlines (growing) over the object
    sel = s.trail == TRAIL_GROW
    for k in range(1, len(TRAIL_ALPHAS) + 1):
        _draw(canvas, pad, vis[sel], s.shape[sel], s.cx[sel], s.cy[sel], s.r[sel] * (1 - k * SCALE_STEP),
              s.rgb[sel] * GROW_OUTLINE_SHADE, 1.0 - 0.2 * (k - 1), outline=True)


# ---------------------------------------------------------------------------------------- backgrounds
def _upsample_matrix(low: int, high: int) -> np.ndarray:
    """``[high, low]`` bilinear interpolation weights (pixel centres aligned)."""
    pos = (np.arange(high) + 0.5) * low / high - 0.5
    pos = np.clip(pos, 0, low - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, low - 1)
    w = pos - lo
    m = np.zeros((high, low), np.float32)
    m[np.arange(high), lo] += 1 - w
    m[np.arange(high), hi] += w
    return m


def make_backgrounds(
    rng: np.random.Generator, n: int, size: int, texture_cells: int = 6, width: int | None = None
) -> np.ndarray:
    """``n`` dim, low-saturation, textured backgrounds: float32 ``[n, size, width, 3]`` in 0..255
    (``width`` defaults to ``size``; a wider frame has proportionally more texture cells across).

    Each is a base grey with a slight tint, a linear gradient and a smooth random texture, so that
    backgrounds vary between videos but never look like an object colour.
    """
    width = size if width is None else width
    cells_x = texture_cells if width == size else max(1, round(texture_cells * width / size))
    base = rng.uniform(25, 85, (n, 1, 1, 1)) + rng.uniform(-10, 10, (n, 1, 1, 3))
    ang = rng.uniform(0, 2 * np.pi, n)
    amp = rng.uniform(0, 25, n)
    ys = (np.arange(size, dtype=np.float32) / (size - 1) - 0.5)
    # across a wider frame: the same pixel pitch, centred (a square frame takes ys itself, bit for bit)
    xs = ys if width == size else ((np.arange(width) - (width - 1) / 2) / (size - 1)).astype(np.float32)
    grad = (np.cos(ang)[:, None, None] * xs[None, None, :] + np.sin(ang)[:, None, None] * ys[None, :, None])
    grad = grad * amp[:, None, None]
    m_y, m_x = _upsample_matrix(texture_cells, size), _upsample_matrix(cells_x, width)
    low = rng.standard_normal((n, 3, texture_cells, cells_x), dtype=np.float32)
    tex = (m_y @ low @ m_x.T).transpose(0, 2, 3, 1)  # [n, size, width, 3]
    out = tex * rng.uniform(3, 9, (n, 1, 1, 1)).astype(np.float32)
    out += (base + grad[..., None]).astype(np.float32)
    return np.clip(out, 0, 255, out=out)


def render(
    backgrounds: np.ndarray, slots: list[ObjectSlot], rng: np.random.Generator, noise_std: float = 3.0
) -> np.ndarray:
    """Draw ``slots`` (in order, later on top) over ``backgrounds`` ``[N, H, W, 3]``; add sensor noise.

    Returns uint8 ``[N, H, W, 3]``.
    """
    n, h, w, _ = backgrounds.shape
    pad = h // 2
    canvas = np.zeros((n, h + 2 * pad, w + 2 * pad, 3), np.float32)
    canvas[:, pad:pad + h, pad:pad + w] = backgrounds
    for slot in slots:
        if len(slot) != n:
            raise ValueError(f"render: slot has {len(slot)} frames; expected {n}")
        draw_slot(canvas, slot, pad)
    out = canvas[:, pad:pad + h, pad:pad + w]
    if noise_std > 0:
        out = out + noise_std * rng.standard_normal(out.shape, dtype=np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)

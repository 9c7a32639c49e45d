"""From painted parts to pixels: each part's base colour modulated by per-image texture fields (or a geometric
pattern), then shadows, haze towards the horizon, exposure, colour cast, gamma, blur and sensor noise."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from synthcp2d.data.scene_painter.elements import FIELDS, Appearance, SceneStyle

__all__ = ["pattern_colors", "shade", "texture_fields"]


def texture_fields(rng: np.random.Generator, height: int, width: int, px: float, horizon: float) -> np.ndarray:
    """Texture fields in ``FIELDS`` order, shape (K, H, W), each roughly zero-mean with unit-scale amplitude.

    ``px`` scales the texture periods (1 at width 256); ``horizon`` is the row where the vertical gradient is 0.5.
    """
    r = rng
    H, W = height, width
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)

    def smooth(cell_px: float) -> np.ndarray:
        cell = max(2, int(round(cell_px * px)))
        grid = r.standard_normal((H // cell + 3, W // cell + 3)).astype(np.float32)
        up = ndimage.zoom(grid, cell, order=1)
        oy, ox = (int(v) for v in r.integers(0, cell, 2))
        f = up[oy : oy + H, ox : ox + W]
        return f / (f.std() + 1e-6)

    low, mid = smooth(r.uniform(24, 48)), smooth(r.uniform(5, 10))
    high = r.standard_normal((H, W)).astype(np.float32)
    pw, ph = r.uniform(5, 10) * px, r.uniform(6, 12) * px
    ox, oy = r.uniform(0, pw), r.uniform(0, ph)
    win = (((xx + ox) % pw) < 0.55 * pw) & (((yy + oy) % ph) < 0.5 * ph)
    windows = np.where(win, -1.0, 0.4).astype(np.float32)
    period = r.uniform(2.5, 5.0) * px
    stripes = np.sign(np.sin(2 * math.pi * (xx + r.uniform(0, period)) / period)).astype(np.float32)
    tp = r.uniform(4, 8) * px
    tiles = np.where((((xx + yy * 0.3) % tp) < 1.0) | ((yy % (0.6 * tp)) < 1.0), -1.0, 0.15).astype(np.float32)
    hz = max(horizon, 1.0)
    vgrad = np.clip(yy / hz, 0, 1) - 0.5
    return np.stack([low, mid, high, windows, stripes, tiles, vgrad])


def pattern_colors(look: Appearance, mask: np.ndarray) -> np.ndarray:
    """Colours (N, 3) for the masked pixels of a patterned part."""
    kind, color2, period, angle = look.pattern  # type: ignore[misc]
    ys, xs = np.nonzero(mask)
    u = xs * math.cos(angle) + ys * math.sin(angle)
    v = -xs * math.sin(angle) + ys * math.cos(angle)
    if kind == "rainbow":
        hue = (u / (4 * period)) % 1.0
        rgb = np.stack([np.abs(hue * 6 - 3) - 1, 2 - np.abs(hue * 6 - 2), 2 - np.abs(hue * 6 - 4)], 1)
        return np.clip(rgb, 0, 1)
    if kind == "checker":
        t = (np.floor(u / period) + np.floor(v / period)) % 2
    elif kind == "stripes":
        t = np.floor(u / period) % 2
    elif kind == "dots":
        t = (((u % period) - period / 2) ** 2 + ((v % period) - period / 2) ** 2) < (0.3 * period) ** 2
    else:  # rings around the part's centre
        d = np.hypot(xs - xs.mean(), ys - ys.mean())
        t = np.floor(d / period) % 2
    t = np.asarray(t, np.float32)[:, None]
    return look.color[None] * (1 - t) + np.asarray(color2)[None] * t


def shade(
    canvas: np.ndarray,
    looks: Sequence[Appearance],
    shadow: np.ndarray,
    *,
    rng: np.random.Generator,
    style: SceneStyle,
    sunny: bool,
    horizon: float,
    px: float,
) -> np.ndarray:
    """The uint8 RGB image (H, W, 3) of a painted canvas.

    Args:
        canvas: part id per pixel (H, W); part ``i`` looks like ``looks[i - 1]``, 0 (nothing painted) is black.
        looks: each part's appearance.
        shadow: shadow mask in [0, 1], (H, W).
        rng: the scene's random stream (texture, lighting and noise are drawn from it, in this order).
        style: the data set's fog, illumination, blur and noise ranges.
        sunny: hard shadows (else overcast: soft ones).
        horizon: image row of the horizon (the haze band's centre).
        px: texture scale (1 at width 256).
    """
    r, st = rng, style
    H, W = canvas.shape
    colors = np.zeros((len(looks) + 1, 3), np.float32)
    weights = np.zeros((len(looks) + 1, len(FIELDS)), np.float32)
    for i, lk in enumerate(looks, start=1):
        colors[i] = lk.color
        weights[i] = lk.weights()
    fields = texture_fields(r, H, W, px, horizon)
    modulation = np.einsum("hwk,khw->hw", weights[canvas], fields)
    img = colors[canvas] * (1.0 + modulation)[..., None]
    for i, lk in enumerate(looks, start=1):
        if lk.pattern is not None:
            mask = canvas == i
            if mask.any():
                relief = (1.0 + modulation[mask] * 0.5)[:, None]
                img[mask] = pattern_colors(lk, mask) * relief
    sh = ndimage.gaussian_filter(shadow, 0.8 * px)
    img *= (1.0 - (r.uniform(0.35, 0.6) if sunny else 0.3) * sh)[..., None]
    if r.random() < st.p_fog:
        yy = np.arange(H, dtype=np.float32)[:, None]
        w = r.uniform(0.25, 0.65) * np.exp(-(((yy - horizon) / (r.uniform(0.12, 0.3) * H)) ** 2))
        fog = np.asarray([0.75, 0.77, 0.8], np.float32) * r.uniform(0.8, 1.1)
        img = img * (1 - w[..., None]) + fog * w[..., None]
    gain = r.uniform(*st.illumination)
    cast = r.normal(1.0, 0.05, 3).astype(np.float32)
    img = np.clip(img * gain * cast, 0, 1) ** r.uniform(0.85, 1.15)
    sigma = r.uniform(*st.blur_sigma) * px
    if sigma > 0.05:
        img = ndimage.gaussian_filter(img, (sigma, sigma, 0))
    img = img + r.normal(0, r.uniform(*st.noise_std), img.shape).astype(np.float32)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)

"""A labelled heatmap PNG with pillow only (no matplotlib): rows x columns of values, a
viridis-like colour scale from the data's min to max, a labelled colour bar, axis labels, an
optional caption and one marked column."""
from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ouromamba_jax.io import atomic

# Viridis anchors (0, .25, .5, .75, 1).
_ANCHORS = np.asarray([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98),
                       (253, 231, 37)], np.float64)
NAN_COLOR = (200, 200, 200)
MARK_COLOR = (220, 20, 60)


def colormap(values: np.ndarray) -> np.ndarray:
  """values in [0, 1] (NaN allowed) -> uint8 RGB (..., 3)."""
  v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(_ANCHORS) - 1)
  lo = np.minimum(np.floor(v).astype(int), len(_ANCHORS) - 2)
  frac = (v - lo)[..., None]
  rgb = _ANCHORS[lo] * (1 - frac) + _ANCHORS[lo + 1] * frac
  rgb = np.round(rgb).astype(np.uint8)
  rgb[np.isnan(values)] = NAN_COLOR
  return rgb


def render(grid, title: str = '', x_label: str = '', y_label: str = '', bar_label: str = '',
           caption: str = '', mark_column: Optional[int] = None,
           mark_label: str = '') -> Image.Image:
  """grid: (rows, cols) floats (NaN = no data). Row 0 is drawn at the top.

  bar_label names the colour bar's quantity (drawn above it); caption is a line under the plot
  saying what was measured where; mark_column outlines one column across all rows (e.g. the
  class token, whose statistics differ from the patches') with mark_label above it.
  """
  grid = np.asarray(grid, np.float64)
  if grid.ndim != 2 or grid.size == 0:
    raise ValueError(f'heatmap needs a non-empty 2-D grid, got shape {grid.shape}')
  rows, cols = grid.shape
  if mark_column is not None and not 0 <= mark_column < cols:
    raise ValueError(f'mark_column {mark_column} is outside the {cols} columns')
  finite = grid[np.isfinite(grid)]
  lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
  span = hi - lo if hi > lo else 1.0
  font = ImageFont.load_default()
  cw = int(np.clip(640 // cols, 3, 16))
  ch = int(np.clip(400 // rows, 4, 16))
  left, top, bottom, bar = 48, 36, 30 + (14 if caption else 0), 70
  bar = max(bar, int(font.getlength(bar_label)) + 8)
  width = max(left + cols * cw + 10 + bar, int(font.getlength(caption)) + 8)
  height = top + rows * ch + bottom
  canvas = Image.new('RGB', (width, height), (255, 255, 255))
  cells = colormap((grid - lo) / span)
  cells = np.repeat(np.repeat(cells, ch, axis=0), cw, axis=1)
  canvas.paste(Image.fromarray(cells), (left, top))
  draw = ImageDraw.Draw(canvas)
  black = (0, 0, 0)
  draw.text((left, 4), title, fill=black, font=font)
  for r in _ticks(rows):
    draw.text((4, top + r * ch + max(0, ch // 2 - 5)), str(r), fill=black, font=font)
  for c in _ticks(cols):
    draw.text((left + c * cw, top + rows * ch + 3), str(c), fill=black, font=font)
  draw.text((left + cols * cw // 2 - 10, top + rows * ch + 16), x_label, fill=black, font=font)
  draw.text((4, top - 12), y_label, fill=black, font=font)
  if mark_column is not None:
    x = left + mark_column * cw
    draw.rectangle((x, top, x + cw - 1, top + rows * ch - 1), outline=MARK_COLOR)
    draw.text((max(left, x + cw // 2 - 3 * len(mark_label)), top - 12), mark_label,
              fill=MARK_COLOR, font=font)
  # Colour bar: top = max.
  bx = left + cols * cw + 10
  bar_h = rows * ch
  ramp = colormap(np.linspace(1.0, 0.0, bar_h)[:, None].repeat(12, axis=1))
  canvas.paste(Image.fromarray(ramp), (bx, top))
  draw.text((bx, top - 14), bar_label, fill=black, font=font)
  draw.text((bx + 15, top - 2), f'{hi:.3g}', fill=black, font=font)
  draw.text((bx + 15, top + bar_h - 10), f'{lo:.3g}', fill=black, font=font)
  if caption:
    draw.text((4, height - 14), caption, fill=black, font=font)
  return canvas


def _ticks(n: int, most: int = 12) -> list[int]:
  step = max(1, int(np.ceil(n / most)))
  return list(range(0, n, step))


def write_png(path: str, grid, **kwargs) -> None:
  """`render(grid, **kwargs)` as a PNG file."""
  atomic.write_png(path, render(grid, **kwargs))

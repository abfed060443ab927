"""Loss curves as a PNG with pillow only (no matplotlib, which is not a dependency).

One panel per curve, each with its own y range: Gen's loss terms differ by orders of magnitude,
so on a shared axis the small ones would be flat lines at the bottom.
"""
from __future__ import annotations

import io
import math
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ouromamba_jax.io import atomic

PANEL_W, PANEL_H = 300, 150
_MARGIN = dict(left=56, right=12, top=22, bottom=28)
LINE_COLORS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))
_BLACK, _GREY = (0, 0, 0), (215, 215, 215)


def _finite_range(values: Sequence[np.ndarray]) -> tuple[float, float]:
  finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
  if not finite.size:
    return 0.0, 1.0
  lo, hi = float(finite.min()), float(finite.max())
  pad = (hi - lo) * 0.05 or max(abs(hi), 1.0) * 0.05
  return lo - pad, hi + pad


def _draw_panel(draw: ImageDraw.ImageDraw, origin: tuple[int, int], title: str,
                lines: Mapping[str, Sequence[float]], x_label: str, font) -> None:
  """One framed panel: title, y range labels, x extent, one polyline per entry of `lines`."""
  ox, oy = origin
  x0, y0 = ox + _MARGIN['left'], oy + _MARGIN['top']
  x1, y1 = ox + PANEL_W - _MARGIN['right'], oy + PANEL_H - _MARGIN['bottom']
  series = [np.asarray(v, np.float64) for v in lines.values()]
  lo, hi = _finite_range(series)
  n = max((len(v) for v in series), default=0)
  draw.rectangle((x0, y0, x1, y1), outline=_GREY)
  draw.text((x0, oy + 4), title, fill=_BLACK, font=font)
  draw.text((ox + 2, y0), f'{hi:.3g}', fill=_BLACK, font=font)
  draw.text((ox + 2, y1 - 10), f'{lo:.3g}', fill=_BLACK, font=font)
  draw.text((x0, y1 + 3), '1', fill=_BLACK, font=font)
  draw.text((x1 - 6 * len(str(n)), y1 + 3), str(n), fill=_BLACK, font=font)
  draw.text(((x0 + x1) // 2 - 3 * len(x_label), y1 + 14), x_label, fill=_BLACK, font=font)
  legend_x = x0 + int(font.getlength(title)) + 16   # legend on the title line, off the lines
  for (name, values), color in zip(zip(lines.keys(), series), LINE_COLORS):
    if len(lines) > 1:
      draw.text((legend_x, oy + 4), name, fill=color, font=font)
      legend_x += int(font.getlength(name)) + 10
    points = [(x0 + (x1 - x0) * (i / max(n - 1, 1)), y1 - (y1 - y0) * (v - lo) / (hi - lo))
              for i, v in enumerate(values) if math.isfinite(v)]
    if len(points) > 1:
      draw.line(points, fill=color, width=2)
    elif points:
      x, y = points[0]
      draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=color)


def render(panels: Sequence[tuple[str, Mapping[str, Sequence[float]]]], x_label: str = 'step',
           columns: int = 2, caption: str = '') -> Image.Image:
  """panels: (title, {line name: values}) each; a line's i-th value is drawn at x = i + 1."""
  if not panels:
    raise ValueError('a loss-curve figure needs at least one panel')
  columns = max(1, min(columns, len(panels)))
  rows = -(-len(panels) // columns)
  footer = 16 if caption else 0
  canvas = Image.new('RGB', (columns * PANEL_W, rows * PANEL_H + footer), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  font = ImageFont.load_default()
  for k, (title, lines) in enumerate(panels):
    _draw_panel(draw, ((k % columns) * PANEL_W, (k // columns) * PANEL_H), title, lines,
                x_label, font)
  if caption:
    draw.text((4, rows * PANEL_H + 2), caption, fill=_BLACK, font=font)
  return canvas


def write_png(path: str, panels, **kwargs) -> None:
  buffer = io.BytesIO()
  render(panels, **kwargs).save(buffer, format='PNG')
  atomic.write_bytes(path, buffer.getvalue())


def gen_panels(groups: Sequence[Mapping], metrics: Sequence[str]
               ) -> list[tuple[str, dict[str, list[float]]]]:
  """Gen's losses.json groups -> one panel per loss term, one line per image group (so a group
  that diverged shows as its own line instead of vanishing in a mean); at most
  len(LINE_COLORS) groups are drawn, the first ones."""
  shown = list(groups)[:len(LINE_COLORS)]
  return [(name, {f'group {int(g["group"]) + 1}': list(g[name]) for g in shown})
          for name in metrics]


def calibration_panels(blocks: Sequence[Mapping]) -> list[tuple[str, dict[str, list[float]]]]:
  """A quant report's per-block results -> one panel: reconstruction loss (1 - cosine of the
  mixer output) per block with the initial scales and after training."""
  return [('reconstruction loss per block (1 - cos)',
           {'init': [float(b['loss_init']) for b in blocks],
            'final': [float(b['loss_final']) for b in blocks]})]

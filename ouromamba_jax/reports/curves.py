"""Loss curves as a PNG with pillow only (no matplotlib, which is not a dependency).

One panel per curve, each with its own y range: Gen's loss terms differ by orders of magnitude,
so on a shared axis the small ones would be flat lines at the bottom.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ouromamba_jax.io import atomic

PANEL_W, PANEL_H = 300, 150
_MARGIN = dict(left=56, right=12, top=22, bottom=28)
LINE_COLORS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14),
               (140, 86, 75), (227, 119, 194), (23, 190, 207))
_BLACK, _GREY = (0, 0, 0), (215, 215, 215)
_LEGEND_ROW = 14
Panel = tuple  # (title, {line: values}) or (title, {line: values}, {line: error bar half-widths})


def _finite_range(values: Sequence[np.ndarray]) -> tuple[float, float]:
  finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
  if not finite.size:
    return 0.0, 1.0
  lo, hi = float(finite.min()), float(finite.max())
  pad = (hi - lo) * 0.05 or max(abs(hi), 1.0) * 0.05
  return lo - pad, hi + pad


def _draw_panel(draw: ImageDraw.ImageDraw, origin: tuple[int, int], width: int, panel: Panel,
                colors: Mapping[str, tuple[int, int, int]], x_label: str,
                x_ticks: Sequence[str] | None, font) -> None:
  """One framed panel: title, y range labels, x ticks (1..n or the given labels), one polyline
  per line, error bars where the panel has them."""
  title, lines = panel[0], panel[1]
  errors = panel[2] if len(panel) > 2 else {}
  ox, oy = origin
  x0, y0 = ox + _MARGIN['left'], oy + _MARGIN['top']
  x1, y1 = ox + width - _MARGIN['right'], oy + PANEL_H - _MARGIN['bottom']
  series = {name: np.asarray(v, np.float64) for name, v in lines.items()}
  bars = {name: np.nan_to_num(np.asarray(errors.get(name, np.zeros(len(v))), np.float64))
          for name, v in series.items()}
  lo, hi = _finite_range([v + s * bars[name] for name, v in series.items() for s in (-1, 1)])
  n = max((len(v) for v in series.values()), default=0)
  px = lambda i: x0 + (x1 - x0) * (i / max(n - 1, 1))
  py = lambda v: y1 - (y1 - y0) * (v - lo) / (hi - lo)
  draw.rectangle((x0, y0, x1, y1), outline=_GREY)
  draw.text((x0, oy + 4), title, fill=_BLACK, font=font)
  draw.text((ox + 2, y0), f'{hi:.3g}', fill=_BLACK, font=font)
  draw.text((ox + 2, y1 - 10), f'{lo:.3g}', fill=_BLACK, font=font)
  if x_ticks is None:
    ticks = {0: '1', n - 1: str(n)}
  else:
    room = max(int((x1 - x0) / max(n - 1, 1)), 12)
    ticks = {i: _fit(label, room, font) for i, label in enumerate(x_ticks[:n])}
  for i, label in ticks.items():
    x = min(max(px(i) - font.getlength(label) / 2, ox + 2), ox + width - font.getlength(label))
    draw.text((x, y1 + 3), label, fill=_BLACK, font=font)
  draw.text(((x0 + x1) // 2 - 3 * len(x_label), y1 + 14), x_label, fill=_BLACK, font=font)
  for name, values in series.items():
    color = colors[name]
    points = [(px(i), py(v)) for i, v in enumerate(values) if math.isfinite(v)]
    for i, v in enumerate(values):
      if math.isfinite(v) and bars[name][i] > 0:
        x, half = px(i), bars[name][i]
        draw.line([(x, py(v - half)), (x, py(v + half))], fill=color, width=1)
        draw.line([(x - 3, py(v - half)), (x + 3, py(v - half))], fill=color, width=1)
        draw.line([(x - 3, py(v + half)), (x + 3, py(v + half))], fill=color, width=1)
    if len(points) > 1:
      draw.line(points, fill=color, width=2)
    elif points:
      x, y = points[0]
      draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=color)


def _fit(label: str, room: float, font) -> str:
  while len(label) > 1 and font.getlength(label) > room - 4:
    label = label[:-1]
  return label


def _legend_entry_width(name: str, font) -> int:
  """A legend entry: swatch, gap, name, gap to the next entry."""
  return 14 + int(font.getlength(name)) + 12


def _legend_rows(names: Sequence[str], width: int, font) -> list[list[str]]:
  """Line names wrapped into rows of the figure's width."""
  rows, row, used = [], [], 4
  for name in names:
    need = _legend_entry_width(name, font)
    if row and used + need > width:
      rows.append(row)
      row, used = [], 4
    row.append(name)
    used += need
  return rows + ([row] if row else [])


def render(panels: Sequence[Panel], x_label: str = 'step', columns: int = 2, caption: str = '',
           x_ticks: Sequence[str] | None = None, panel_width: int = PANEL_W) -> Image.Image:
  """panels: (title, {line name: values}[, {line name: error bar half-widths}]) each; a line's
  i-th value is drawn at x = i + 1 (or above x_ticks[i]). A line keeps its colour in every
  panel, and a legend under the panels names the lines when a panel has more than one."""
  if not panels:
    raise ValueError('a loss-curve figure needs at least one panel')
  columns = max(1, min(columns, len(panels)))
  rows = -(-len(panels) // columns)
  names = list(dict.fromkeys(name for panel in panels for name in panel[1]))
  colors = {name: LINE_COLORS[i % len(LINE_COLORS)] for i, name in enumerate(names)}
  font = ImageFont.load_default()
  width = columns * panel_width
  legend = (_legend_rows(names, width, font)
            if any(len(panel[1]) > 1 for panel in panels) else [])
  legend_h = len(legend) * _LEGEND_ROW + (4 if legend else 0)
  footer = 16 if caption else 0
  canvas = Image.new('RGB', (width, rows * PANEL_H + legend_h + footer), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  for k, panel in enumerate(panels):
    _draw_panel(draw, ((k % columns) * panel_width, (k // columns) * PANEL_H), panel_width,
                panel, colors, x_label, x_ticks, font)
  y = rows * PANEL_H + 2
  for row in legend:
    x = 4
    for name in row:
      draw.rectangle((x, y + 3, x + 9, y + 10), fill=colors[name])
      draw.text((x + 14, y), name, fill=colors[name], font=font)
      x += _legend_entry_width(name, font)
    y += _LEGEND_ROW
  if caption:
    draw.text((4, rows * PANEL_H + legend_h + 2), caption, fill=_BLACK, font=font)
  return canvas


def write_png(path: str, panels, **kwargs) -> None:
  """`render(panels, **kwargs)` as a PNG file."""
  atomic.write_png(path, render(panels, **kwargs))


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

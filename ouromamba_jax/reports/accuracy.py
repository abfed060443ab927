"""The accuracy table: FP and every quantized run, as Markdown and JSON.

A row is a dict with at least `name` and `top1` (a fraction); quantized rows also carry
`method`, `preset`, `calib_source`, `calib_images` and optionally `top5`,
`calibration_seconds`. The Markdown has a summary matrix (method + calibration data x
preset, top-1 and its drop from FP) followed by every run in detail.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

from ouromamba_jax.io import atomic

JSON_FILE = 'accuracy.json'
MD_FILE = 'accuracy.md'
METHOD_NAMES = {'rtn': 'RTN', 'ptq4vm': 'PTQ4VM-style', 'ouromamba': 'OuroMamba'}
SOURCE_NAMES = {'gen': 'Gen', 'noise': 'noise', 'real': 'real'}
PRESET_ORDER = ('w8a8', 'w4a8', 'w4a4', 'w4a4_alog', 'w4a4_no_outliers', 'w4a4_ssm8',
                'w4a4_float_ssm')


def row_label(row: Mapping[str, Any]) -> str:
  method = METHOD_NAMES.get(row.get('method'), str(row.get('method')))
  if row.get('method') == 'rtn':   # RTN's min-max scales barely depend on the data
    return f'{method} ({SOURCE_NAMES.get(row.get("calib_source"), row.get("calib_source"))})'
  return f'{method} + {SOURCE_NAMES.get(row.get("calib_source"), row.get("calib_source"))}'


def _pct(x: Optional[float]) -> str:
  return '–' if x is None else f'{100 * x:.2f}'


def to_markdown(fp: Optional[Mapping[str, Any]], runs: Sequence[Mapping[str, Any]],
                title: str = '', notes: Sequence[str] = ()) -> str:
  out = [f'## {title}', ''] if title else []
  fp_top1 = fp.get('top1') if fp else None
  presets = [p for p in PRESET_ORDER if any(r.get('preset') == p for r in runs)]
  presets += sorted({r.get('preset') for r in runs} - set(presets))
  labels = []
  for r in runs:
    if row_label(r) not in labels:
      labels.append(row_label(r))
  out.append('| method + calibration data | ' + ' | '.join(p.upper() for p in presets) + ' |')
  out.append('|---|' + '---:|' * len(presets))
  if fp:
    out.append('| FP | ' + ' | '.join(_pct(fp_top1) for _ in presets) + ' |')
  for label in labels:
    cells = []
    for p in presets:
      hit = [r for r in runs if row_label(r) == label and r.get('preset') == p]
      if not hit or hit[0].get('top1') is None:
        cells.append('–')
        continue
      top1 = hit[0]['top1']
      delta = f' ({100 * (top1 - fp_top1):+.2f})' if fp_top1 is not None else ''
      cells.append(f'{_pct(top1)}{delta}')
    out.append(f'| {label} | ' + ' | '.join(cells) + ' |')
  out += ['', 'Top-1 (%) on the evaluation images; in brackets the change from FP (points).', '']
  out.append('| run | method | preset | calibration | images | top-1 | top-5 | '
             'calibration time (s) |')
  out.append('|---|---|---|---|---:|---:|---:|---:|')
  if fp:
    out.append(f'| FP | – | – | – | – | {_pct(fp_top1)} | {_pct(fp.get("top5"))} | – |')
  for r in runs:
    secs = r.get('calibration_seconds')
    out.append(f'| {r["name"]} | {r.get("method")} | {r.get("preset")} | {r.get("calib_source")} '
               f'| {r.get("calib_images", "–")} | {_pct(r.get("top1"))} | {_pct(r.get("top5"))} '
               f'| {"–" if secs is None else f"{secs:.0f}"} |')
  out += [''] + [f'- {n}' for n in notes]
  return '\n'.join(out).rstrip() + '\n'


def write(directory: str, fp: Optional[Mapping[str, Any]], runs: Sequence[Mapping[str, Any]],
          meta: Optional[Mapping[str, Any]] = None, title: str = 'Accuracy',
          notes: Sequence[str] = ()) -> tuple[str, str]:
  """accuracy.json and accuracy.md in `directory`; returns their paths."""
  md_path = os.path.join(directory, MD_FILE)
  json_path = os.path.join(directory, JSON_FILE)
  atomic.write_json(json_path, {'meta': dict(meta or {}), 'fp': dict(fp) if fp else None,
                               'runs': [dict(r) for r in runs]})
  atomic.write_text(md_path, to_markdown(fp, runs, title, notes))
  return md_path, json_path

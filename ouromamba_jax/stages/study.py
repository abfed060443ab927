"""Mode `study`: one of the paper's ablations as a grid of pipeline runs with a seed spread.

  python main.py --config=configs/vim_t_cifar10.py --config.mode=study --config.study.name=k
  python main.py --config=configs/vim_t_cifar10.py --config.mode=study \
      --config.study.name=calib_size --config.pipeline.full=True        # paper size (GPU)

A study (`STUDIES`) is a list of cells, each a set of config overrides ('section.field' ->
value) on the base config, plus the quantization runs every cell makes. Each (cell, seed) is
the `pipeline` mode with the cell's overrides and `seed` = base seed + s, in
WORKDIR/study/<name>/<cell>/seed<s>; the pipeline skips what already finished, so a stopped
study resumes where it stopped. Seeds move what the seed moves: Gen's targets and noise, the
noise images, the calibration subsets (not the model: it is the config's checkpoint).

Outputs in WORKDIR/study/<name>/: study.json (every (cell, seed, run) row and the summary:
top-1 mean ± std over seeds per (cell, run)), study.md (the summary table) and study.png (top-1
against the study's axis, one line per run), rewritten after every cell so a partial study
keeps its numbers. `study.part='i/n'` splits a study over n processes on one workdir (cells
that share a Gen wait for one another on its lock); a last run without it only reads the
finished cells and writes the report. A finished (cell, seed) leaves its rows in `cell.json`
with the key of the settings they depend on: a later run with the same settings reads them
instead of running the cell again, so a study carried to another machine by its small report
files (no synthetic images, no quantized checkpoints) resumes without redoing finished cells;
`study.report_only` writes the report of the recorded cells alone (a partial study, anywhere).
Why a mode and not a script: the runs are the pipeline's, with its resume, its data handling
and its reports, and the studies are configs as code like the rest.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import math
import os
import re
import time
from typing import Any

import ml_collections as mlc

from ouromamba_jax import progress
from ouromamba_jax.io import atomic
from ouromamba_jax.reports import curves
from ouromamba_jax.stages import digests
from ouromamba_jax.stages import shared_gen
from ouromamba_jax.stages.runs import parse_runs

STUDY_SUBDIR = 'study'
SHARED_GEN_SUBDIR = 'gen'   # WORKDIR/study/gen: Gen sets shared by cells (shared_gen)
STUDY_PLOT_WIDTH = 640      # px: room for the cells' labels under the x axis
CELL_RECORD = 'cell.json'   # a finished (cell, seed): its rows and the key of their settings
_NOT_RESULT_DATA_FIELDS = ('data_dir', 'use_tfds')   # where the data is read from, not which
_OURO_W4A4 = 'ouromamba:w4a4:gen'


@dataclasses.dataclass(frozen=True)
class Study:
  """What one ablation varies: (label, overrides) cells, the runs each cell makes."""
  doc: str
  axis: str                                    # what varies along the cells (the plot's x)
  cells: tuple[tuple[str, dict[str, Any]], ...]
  runs: str = ''                               # pipeline.runs of every cell ('' = the config's)


def _along(field: str, values, runs: str, doc: str) -> Study:
  """A study over one config field."""
  name = field.split('.')[-1]
  return Study(doc, name, tuple((f'{name}={v}', {field: v}) for v in values), runs)


_SOURCES = ','.join(f'ouromamba:{p}:{s}' for p in ('w4a4', 'w4a4_alog')
                    for s in ('noise', 'gen', 'real'))
STUDIES = {
    'seeds': Study("the config's own runs (e.g. pipeline.runs='table') with a seed spread",
                   'seed', (('base', {}),)),
    'calib_size': _along('quant.calib_images', (8, 32, 128), _SOURCES,
                         'where data matters: calibration-set size x source x preset'),
    # Paper Table 6. 'pse+lo' is the official code's state-output fragment (L_PSE) in place of
    # L_C, next to L_O; 'noise' calibrates on Gaussian noise (no Gen at all).
    'gen_loss': Study(
        "Gen's loss terms (paper Table 6): L_C + L_O, L_O only, L_C only, L_PSE + L_O, noise",
        'Gen objective',
        (('lc+lo', {}), ('lo', {'gen.contrastive_weight': 0.0}),
         ('lc', {'gen.output_weight': 0.0}),
         ('pse+lo', {'gen.contrastive_weight': 0.0, 'gen.pse_weight': 1.0}),
         ('noise', {'pipeline.runs': 'ouromamba:w4a4:noise,ouromamba:w4a8:noise'})),
        'ouromamba:w4a4:gen,ouromamba:w4a8:gen'),
    'n_refresh': _along('quant.n_refresh', (1, 5, 10, 20, 'L'), _OURO_W4A4,
                        'outlier-set reset period (paper Fig. 9); L = never reset'),
    'k': _along('quant.k', (2.0, 3.0, 4.0, 5.0), _OURO_W4A4,
                'outlier threshold mu + k sigma (paper Fig. 9)'),
    'neighbourhood': _along('gen.neighbourhood', (1, 3, 5, 7), _OURO_W4A4,
                            "Gen's Δ-weighted neighbourhood p (paper Fig. 9)"),
    'positives': _along('gen.num_positives', (4, 8, 12, 16), _OURO_W4A4,
                        "Gen's contrastive positives K (paper Fig. 9b)"),
}


def study_named(name: str) -> Study:
  if name not in STUDIES:
    raise ValueError(f'study.name={name!r} is not a study; choose one of {sorted(STUDIES)} '
                     '(stages/study.py says what each varies).')
  return STUDIES[name]


def _set(cfg: mlc.ConfigDict, dotted: str, value) -> None:
  section, _, field = dotted.rpartition('.')
  node = cfg
  for part in filter(None, section.split('.')):
    node = node[part]
  if field not in node:
    raise ValueError(f'study override {dotted!r}: the config has no such field.')
  node[field] = value


def sequence_length(cfg: mlc.ConfigDict) -> int:
  """The model's token count (n_refresh = 'L': the outlier set is never reset)."""
  from ouromamba_jax.models import registry  # pylint: disable=g-import-not-at-top
  overrides = {k: v for k, v in cfg.model.get('overrides', {}).items() if v is not None}
  model = registry.build_model(cfg.model.name, **overrides)
  if not hasattr(model, 'seq_len'):
    raise ValueError(f"n_refresh='L' needs a model with one token sequence (Vim); "
                     f'{cfg.model.name} has none: give a number.')
  return int(model.seq_len)


def parse_part(part: str) -> tuple[int, int]:
  """study.part 'i/n' -> (i, n); '' -> (0, 1), every cell."""
  if not part:
    return 0, 1
  match = re.fullmatch(r'\s*(\d+)\s*/\s*(\d+)\s*', part)
  if not match or not int(match[1]) < int(match[2]):
    raise ValueError(f"study.part={part!r}: give 'i/n' with 0 <= i < n (e.g. '0/3', '1/3', "
                     "'2/3' for three processes), or '' for the whole study.")
  return int(match[1]), int(match[2])


def cell_config(config: mlc.ConfigDict, study: Study, overrides: dict[str, Any],
                seed: int) -> mlc.ConfigDict:
  """The base config with the study's runs, the cell's overrides and the seed."""
  from ouromamba_jax.stages import pipeline  # pylint: disable=g-import-not-at-top
  cfg = copy.deepcopy(config)
  with cfg.unlocked():
    cfg.mode = 'pipeline'
    cfg.seed = seed
    if study.runs:
      cfg.pipeline.runs = study.runs
    for dotted, value in overrides.items():
      if dotted == 'quant.n_refresh' and value == 'L':
        value = sequence_length(cfg)
      _set(cfg, dotted, value)
    pipeline.keep_fields(cfg, overrides)   # pipeline.full must not undo the cell's values
  parse_runs(cfg.pipeline.runs)  # a bad runs string fails before any work
  return cfg


def cell_key(cfg: mlc.ConfigDict) -> str:
  """What a cell's numbers depend on, as a short digest of its effective config: the model, the
  evaluation data, Gen's image-defining fields, the quantization settings, the runs and the seed
  (not where the data or the caches are, nor Gen's bookkeeping)."""
  from ouromamba_jax.gen.spec import OPERATIONAL_FIELDS  # pylint: disable=g-import-not-at-top
  what = {'model': cfg.model.to_dict(),
          'data': {k: v for k, v in cfg.data.to_dict().items()
                   if k not in _NOT_RESULT_DATA_FIELDS},
          'gen': {k: v for k, v in cfg.gen.to_dict().items() if k not in OPERATIONAL_FIELDS},
          'quant': cfg.quant.to_dict(), 'runs': str(cfg.pipeline.runs), 'seed': int(cfg.seed)}
  return digests.settings_digest(what)


def finished_rows(cell_dir: str, key: str) -> list[dict[str, Any]] | None:
  """The rows a finished (cell, seed) recorded with these settings, else None (no record, a
  record of other settings, or one that cannot be read: the cell is run again)."""
  try:
    record = atomic.read_json(os.path.join(cell_dir, CELL_RECORD))
  except ValueError:     # a damaged record: the cell is run again and rewrites it
    return None
  if not isinstance(record, dict) or record.get('key') != key:
    return None
  return record.get('rows')


def _slug(label: str) -> str:
  return re.sub(r'[^A-Za-z0-9_.=+-]', '_', label)


def _mean_std(values: list[float]) -> tuple[float, float]:
  """Mean and sample std (0 for one value)."""
  mean = sum(values) / len(values)
  std = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
         if len(values) > 1 else 0.0)
  return mean, std


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per (cell, run), in first-seen order: top-1 mean ± std (sample std; 0 for one seed) over
  the seeds that have a number, their count, the FP top-1 mean of those seeds, and the outlier
  rate's mean ± std (%, of Linear-input entries) over the seeds whose run wrote one."""
  groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
  for r in rows:
    if r.get('top1') is not None:
      groups.setdefault((r['cell'], r['name']), []).append(r)
  out = []
  for (cell, name), rs in groups.items():
    mean, std = _mean_std([100.0 * r['top1'] for r in rs])
    fp = [100.0 * r['fp_top1'] for r in rs if r.get('fp_top1') is not None]
    rates = [100.0 * r['outlier_rate'] for r in rs if r.get('outlier_rate') is not None]
    rate_mean, rate_std = _mean_std(rates) if rates else (None, None)
    out.append({'cell': cell, 'run': name, 'top1_mean': mean, 'top1_std': std,
                'seeds': len(rs), 'fp_top1_mean': _mean_std(fp)[0] if fp else None,
                'outlier_rate_mean': rate_mean, 'outlier_rate_std': rate_std})
  return out


def cell_time(rows) -> tuple[float, int, int]:
  """(seconds, cells timed, cells) over the distinct (cell, seed) of `rows`: the wall time of
  each cell's Gen, quantization and evaluation where it ran (records made before the study
  timed its cells have none)."""
  cells = {(r['cell'], r['seed']): r.get('cell_seconds') for r in rows}
  timed = [v for v in cells.values() if v is not None]
  return float(sum(timed)), len(timed), len(cells)


def _markdown(name: str, study: Study, summary, meta) -> str:
  lines = [f'# Study `{name}`: {study.doc}', '',
           f'{meta["date"]}; {meta["seeds"]} seed(s) per cell; model {meta["model"]} '
           f'({meta["checkpoint"] or "random init"}); {meta["settings"]}.', '']
  if meta.get('partial'):
    _, _, finished = meta.get('cell_time', (0.0, 0, 0))
    lines += [f'**Partial report** (`study.report_only`): {finished} of the '
              f'{len(study.cells) * meta["seeds"]} (cell, seed) runs are finished; the others '
              'are left out.', '']
  lines += ['| cell | run | top-1 % (mean ± std) | seeds | FP top-1 % | outlier rate % |',
           '|---|---|---:|---:|---:|---:|']
  for s in summary:
    fp = '–' if s['fp_top1_mean'] is None else f'{s["fp_top1_mean"]:.2f}'
    rate = ('–' if s.get('outlier_rate_mean') is None
            else f'{s["outlier_rate_mean"]:.2f} ± {s["outlier_rate_std"]:.2f}')
    lines.append(f'| {s["cell"]} | {s["run"]} | {s["top1_mean"]:.2f} ± {s["top1_std"]:.2f} | '
                 f'{s["seeds"]} | {fp} | {rate} |')
  if not summary:
    lines.append('| – | – | no evaluated run yet (or no evaluation data) | – | – | – |')
  seconds, timed, cells = meta.get('cell_time', (0.0, 0, 0))
  if cells and not timed:
    lines += ['', f'Time: none of the {cells} (cell, seed) runs was timed (records made before '
              'the study timed its cells).']
  elif cells:
    lines += ['', f'Time: {timed} of the {cells} (cell, seed) runs were timed, {seconds / 60:.1f} '
              'min of wall time together (each run\'s Gen, quantization and evaluation where it ran; '
              'parts run side by side share the device, so this is process time, not device '
              'time).']
  lines += ['', 'Outlier rate: the fraction of the quantized Linears\' input entries flagged as '
            'dynamic outliers on the run\'s report images (`quant/<run>/outliers.json`; – where '
            'the run wrote no report, e.g. quant.report_images=0).']
  return '\n'.join(lines) + '\n'


def _panels(study: Study, summary):
  """Top-1 (and, where reported, the outlier rate) per run along the cells, mean with a ± std
  bar over the seeds; a run absent from a cell is a gap."""
  cells = [label for label, _ in study.cells]
  runs = list(dict.fromkeys(s['run'] for s in summary))
  by_key = {(s['cell'], s['run']): s for s in summary}

  def pick(run, key):
    values = (by_key.get((c, run), {}).get(key) for c in cells)
    return [float('nan') if v is None else v for v in values]

  def panel(title, mean, std):
    return (title, {run: pick(run, mean) for run in runs}, {run: pick(run, std) for run in runs})

  panels = [panel(f'top-1 % vs {study.axis} (mean ± std over seeds)', 'top1_mean', 'top1_std')]
  if any(s.get('outlier_rate_mean') is not None for s in summary):
    panels.append(panel(f'outlier rate % vs {study.axis}', 'outlier_rate_mean',
                        'outlier_rate_std'))
  return panels


def write_report(directory: str, name: str, study: Study, rows, meta) -> dict[str, Any]:
  summary = summarize(rows)
  meta = {**meta, 'cell_time': cell_time(rows)}
  report = {'study': name, 'doc': study.doc, 'axis': study.axis,
            'cells': [label for label, _ in study.cells], 'meta': meta, 'summary': summary,
            'rows': rows}
  atomic.write_json(os.path.join(directory, 'study.json'), report)
  atomic.write_text(os.path.join(directory, 'study.md'), _markdown(name, study, summary, meta))
  if summary:
    seeds = max(s['seeds'] for s in summary)
    curves.write_png(os.path.join(directory, 'study.png'), _panels(study, summary),
                     x_label=study.axis, columns=1, x_ticks=report['cells'],
                     panel_width=STUDY_PLOT_WIDTH,
                     caption=f'study {name}: up to {seeds} seeds per cell; settings in study.md')
  return report


def run(config, workdir: str, log: progress.Log = progress.log_info, run_pipeline=None,
        run_generate=None) -> dict[str, Any]:
  """Every (cell, seed) of `config.study.name`; returns the report (also written to disk).
  `run_pipeline(config, workdir, log)` is the pipeline mode and `run_generate(config, workdir)`
  the generate stage (both replaceable in tests). Cells with the same Gen settings and seed
  share one synthetic set (`shared_gen`, store WORKDIR/study/gen), also across studies."""
  from ouromamba_jax.stages import pipeline  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.reports import outliers  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.stages import quantize as quantize_stage  # pylint: disable=g-import-not-at-top
  if run_pipeline is None:
    run_pipeline = pipeline.run
  if run_generate is None:
    from ouromamba_jax.stages import generate  # pylint: disable=g-import-not-at-top
    run_generate = generate.run
  name, seeds = str(config.study.name), int(config.study.seeds)
  study = study_named(name)
  if seeds < 1:
    raise ValueError(f'study.seeds={seeds}: give at least 1 (3 for a spread).')
  index, parts = parse_part(config.study.get('part', ''))
  report_only = bool(config.study.get('report_only', False))
  if report_only and parts > 1:
    raise ValueError("study.report_only=True reads the whole study's records: leave study.part "
                     "empty.")
  cells = [(label, cell_config(config, study, overrides, config.seed + s))
           for label, overrides in study.cells for s in range(seeds)]  # all checked up front
  directory = os.path.join(workdir, STUDY_SUBDIR, name)
  os.makedirs(directory, exist_ok=True)
  size = pipeline.effective_config(config)
  meta = {'partial': report_only,
          'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
          'seeds': seeds, 'base_seed': int(config.seed), 'model': config.model.name,
          'checkpoint': config.model.checkpoint,
          'settings': f'gen {size.gen.num_images} images x {size.gen.iterations} steps, '
                      f'{size.quant.calib_images} calibration images, {size.quant.epochs} '
                      f'epochs, eval {size.data.eval_images or "all"} images'
                      f'{" (pipeline.full)" if config.pipeline.full else ""}'}
  rows: list[dict[str, Any]] = []
  report = None    # the written report, while it holds every row so far
  for i, (label, cfg) in enumerate(cells):
    if i % parts != index:
      continue
    seed_index = i % seeds
    log(f'[study {name}] cell {label} seed {cfg.seed} ({i + 1}/{len(cells)})')
    cell_dir = os.path.join(directory, _slug(label), f'seed{seed_index}')
    effective = pipeline.effective_config(cfg)
    key = cell_key(effective)
    done = finished_rows(cell_dir, key)
    if done is not None:
      log(f'[study {name}] cell {label} seed {cfg.seed}: finished earlier ({CELL_RECORD}), '
          'not run again')
      rows += done
      report = None
    elif report_only:
      log(f'[study {name}] cell {label} seed {cfg.seed}: not finished (no {CELL_RECORD} with '
          'these settings); left out of the report')
      continue
    else:
      runs_dir = pipeline.runs_workdir(effective, cell_dir)
      start = time.perf_counter()
      shared_gen.prepare(effective, runs_dir,
                         os.path.join(workdir, STUDY_SUBDIR, SHARED_GEN_SUBDIR), run_generate, log)
      out = run_pipeline(cfg, cell_dir, log)
      fp_top1 = (out.get('fp') or {}).get('top1')
      seconds = time.perf_counter() - start       # Gen (or its copy), quantization, evaluation
      cell_rows = [{'cell': label, 'seed': int(cfg.seed), 'fp_top1': fp_top1, **r,
                    'cell_seconds': seconds,
                    'outlier_rate': outliers.mean_rate(
                        os.path.join(runs_dir, quantize_stage.QUANT_SUBDIR, r['name']))}
                   for r in out['runs']]
      if cell_rows and all(r.get('top1') is not None for r in cell_rows):  # all evaluated
        os.makedirs(cell_dir, exist_ok=True)
        atomic.write_json(os.path.join(cell_dir, CELL_RECORD), {'key': key, 'rows': cell_rows})
      rows += cell_rows
      if parts == 1:   # a partial study keeps its numbers after every cell it runs
        report = write_report(directory, name, study, rows, meta)
  if parts > 1:   # a part's rows are not the study: the collecting run reports them all
    log(f'[study {name}] part {index}/{parts} done; run the study without study.part to '
        'collect every finished cell into the report')
    return {'study': name, 'part': f'{index}/{parts}', 'rows': rows}
  if report is None:   # cells read from records (or none at all) since the last write
    report = write_report(directory, name, study, rows, meta)
  log(f'[study {name}] {"partial report" if report_only else "done"}: '
      f'{os.path.join(directory, "study.md")}')
  return report

"""Mode `pipeline`: generate -> quantize -> evaluate (FP and quantized) -> report, one command.

  python main.py --config=configs/vim_t_cifar10.py                          # demo (~10 min, 2 CPU cores)
  python main.py --config=configs/vim_t_cifar10.py --config.pipeline.full=True   # paper size

Stages (each skips work already done in the workdir, so a rerun or a killed run resumes):
  0. FP        evaluate the float model (cached)
  1. generate  OuroMamba-Gen synthetic images -> <workdir>/gen/ (before the first run that uses
               'gen'; a finished Gen only reloads its groups, and a workdir whose images were
               made with other settings or weights is refused)
  2. quantize  every run of `pipeline.runs` ('method:preset:source', comma-separated, or
               'table' = the 21 runs of RESULTS.md) -> <workdir>/quant/<run>/ (checkpoint,
               per-layer SQNR/cosine, outlier heatmap); a finished run with the same
               settings is skipped, a killed one resumes at its next block
  3. evaluate  each quantized run right after it is calibrated, on `data.eval_images`
               test images (0 = all); results are cached per run and image count
  4. report    <workdir>/reports/accuracy.{md,json}, rewritten after every run that changed
               a result (a partial table survives a stopped run; a rerun that changed
               nothing keeps the report and its recorded times)

With several local GPUs (or `pipeline.workers=N`), stages 2-3 run in N worker processes, one
device group each, after stage 0 and Gen (`stages.pipeline_workers`); the report gathers them.

`pipeline.full=True` applies `FULL` (128 Gen images x 1000 iterations, 128 calibration
images, 10 epochs, the whole test split, the 21-run table) to every field not named in
`pipeline.keep` (main.py names there the fields set on the command line, the study mode its
cells' fields), and works in <workdir>/full so the demo's outputs are not mixed in. Without the
dataset, `data.smoke_dir` (the ImageNet configs: the 300-image sample) is evaluated instead and
labelled a smoke check; without that either, the stages that need no data still run (generate,
quantize on gen/noise images), and runs calibrated on real images and every evaluation are
skipped with a message saying where to put the data.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import time
from typing import Any, Optional

import ml_collections as mlc

from kernels_pallas.selective_scan import api as scan_api
from ouromamba_jax import distributed
from ouromamba_jax import progress
from ouromamba_jax.data import pipeline as data_pipeline
from ouromamba_jax.io import atomic
from ouromamba_jax.reports import accuracy
from ouromamba_jax.stages import digests
from ouromamba_jax.stages import evaluate as evaluate_stage
from ouromamba_jax.stages import gen_outputs
from ouromamba_jax.stages import generate as generate_stage
from ouromamba_jax.stages import pipeline_workers
from ouromamba_jax.stages import quantize as quantize_stage
from ouromamba_jax.stages import sections
from ouromamba_jax.stages.runs import DEMO_RUNS, parse_runs

REPORTS_SUBDIR = 'reports'
FULL_SUBDIR = 'full'
# pipeline.full=True: the paper-size settings (section, field) -> value.
FULL = {
    ('gen', 'num_images'): 128, ('gen', 'iterations'): 1000, ('gen', 'log_every'): 50,
    ('gen', 'checkpoint_every'): 100,
    ('quant', 'calib_images'): 128, ('quant', 'epochs'): 10, ('quant', 'micro_batch'): 64,
    ('data', 'eval_images'): 0, ('pipeline', 'runs'): 'table',
}
def _has_field(cfg, dotted: str) -> bool:
  node = cfg
  for part in dotted.split('.'):
    if not isinstance(node, (mlc.ConfigDict, dict)) or part not in node:
      return False
    node = node[part]
  return True


def kept_fields(cfg) -> list[str]:
  """The names in pipeline.keep, in order."""
  return [n.strip() for n in cfg.pipeline.get('keep', '').split(',') if n.strip()]


def keep_fields(cfg, names) -> None:
  """Adds `names` to cfg.pipeline.keep (in place; no duplicates), where the config has one."""
  if cfg.get('pipeline') is not None and 'keep' in cfg.pipeline:
    cfg.pipeline.keep = ','.join(dict.fromkeys(kept_fields(cfg) + list(names)))


def runs_workdir(cfg, workdir: str) -> str:
  """Where the pipeline of `cfg` (an effective config) writes: <workdir>/full at paper size."""
  return os.path.join(workdir, FULL_SUBDIR) if cfg.pipeline.full else workdir


def effective_config(config) -> mlc.ConfigDict:
  """An unlocked copy of `config`, with FULL applied when pipeline.full, except to the fields
  named in pipeline.keep (set explicitly: a study's cells, command-line flags). A
  `pipeline.runs` changed from the demo default is kept too, so a full-size run can be split
  into parts."""
  cfg = mlc.ConfigDict(config.to_dict())
  if cfg.pipeline.full:
    keep = set(kept_fields(cfg))
    for name in sorted(keep):
      if not _has_field(cfg, name):
        raise ValueError(f'pipeline.keep names {name!r}, which is not a section.field of this '
                         'config (e.g. quant.calib_images).')
    if cfg.pipeline.runs != DEMO_RUNS:
      keep.add('pipeline.runs')
    for (section, field), value in FULL.items():
      if section in cfg and f'{section}.{field}' not in keep:
        cfg[section][field] = value
  return cfg


def run_config(config, method: str, preset: str, source: str) -> mlc.ConfigDict:
  cfg = mlc.ConfigDict(config.to_dict())
  cfg.quant.method, cfg.quant.preset, cfg.quant.calib_source = method, preset, source
  cfg.quant.run_name = ''
  return cfg


# ----------------------------------------------------------------------------------------------
# Stages.

def stage_generate(config, workdir: str, log: progress.Log = progress.log_info) -> str:
  """Always goes through Gen: a finished run only reloads its groups (seconds), and Gen's
  run.json check refuses a workdir whose images were made with other settings or weights
  (skipping on an existing synthetic.npz would reuse them silently)."""
  path = gen_outputs.synthetic_path(workdir)
  t0 = time.time()
  generate_stage.run(config, workdir)
  log(f'[pipeline] generate: {config.gen.num_images} images in {time.time() - t0:.0f} s -> {path}')
  return path


def open_eval_data(config, img_size: int, log: progress.Log = progress.log_info):
  """(the evaluation split or None, is_smoke_check); None comes with a message saying where
  the data goes."""
  try:
    return evaluate_stage.open_source(config.data, img_size, log)
  except data_pipeline.DataNotFoundError as e:
    log(f'[pipeline] NO {config.data.name} DATA: {e}\n[pipeline] continuing with what needs no '
        'data (generate, quantize on gen/noise images); runs calibrated on real images and all '
        'evaluations are skipped. Put the data there (or set --config.data.data_dir) and rerun: '
        'finished stages are skipped.')
    return None, False


def evaluate_cached(path: str, key: dict[str, Any], model, params, data_cfg, source,
                    log: progress.Log = progress.log_info) -> dict[str, Any]:
  """evaluate_stage.evaluate_data, cached in `path` under `key` (skipped when it matches)."""
  cached = atomic.read_json(path)
  if cached is not None and cached.get('key') == key:
    log(f'[pipeline] evaluate: cached {path}')
    return cached['result']
  result = evaluate_stage.evaluate_data(model, params, data_cfg, source=source, log=log)
  if distributed.is_writer():   # every process holds the result; one writes it
    atomic.write_json(path, {'key': key, 'result': result})
  return result


def write_report(directory: str, fp, rows, meta, partial: bool = False, **kwargs) -> str:
  """accuracy.{md,json}, unless they already hold these results (with `partial`, `rows` are
  the table's first runs so far): a rerun that changed nothing keeps the report, its date and
  its recorded pipeline time."""
  old = atomic.read_json(os.path.join(directory, accuracy.JSON_FILE))
  md = os.path.join(directory, accuracy.MD_FILE)
  new = json.loads(json.dumps({'fp': fp, 'runs': rows}))
  if (old is not None and os.path.isfile(md) and old.get('fp') == new['fp']
      and old.get('runs', [])[:len(rows) if partial else None] == new['runs']):
    return md
  return accuracy.write(directory, fp, rows, meta, **kwargs)[0]


def run(config, workdir: str, log: progress.Log = progress.log_info) -> dict[str, Any]:
  """Runs every stage; returns {'fp', 'runs', 'report'} (report: the Markdown path or None)."""
  t_start = time.time()
  cfg = effective_config(config)
  workdir = runs_workdir(cfg, workdir)
  if cfg.pipeline.full:
    log(f'[pipeline] full size ({", ".join(f"{s}.{f}={v}" for (s, f), v in FULL.items())}) '
        f'in {workdir}')
  os.makedirs(workdir, exist_ok=True)
  runs = parse_runs(cfg.pipeline.runs)
  run_specs = [quantize_stage.run_spec(run_config(cfg, method, preset, source).quant)
               for method, preset, source in runs]   # every run checked before any work
  worker = cfg.pipeline.worker
  workers = pipeline_workers.workers_here(cfg.mode, cfg.pipeline.workers, worker,
                                          distributed.process_count())
  model, params = sections.load_model(cfg.model, seed=cfg.seed)
  source, smoke = open_eval_data(cfg, model.img_size, log)
  reports_dir = os.path.join(workdir, REPORTS_SUBDIR)
  data_cfg = cfg.data
  base_key = None
  fp = None
  if source is not None:
    base_key = {'eval_images': data_cfg.eval_images, 'data': cfg.data.name,
                'split': source.name, 'n': int(len(source.labels))}
    log(f'[pipeline] evaluate FP on '
        f'{evaluate_stage.describe_count(source, int(data_cfg.eval_images))}')
    fp = evaluate_cached(os.path.join(reports_dir, f'eval_fp_{data_cfg.eval_images}.json'),
                         {**base_key, 'model': digests.settings_digest(cfg.model.to_dict())},
                         model, params, data_cfg, source, log)
  else:
    log('[pipeline] evaluation SKIPPED (no evaluation data; see above)')

  def report(partial=False):
    rows = [{k: v for k, v in r.items() if k not in ('directory', 'checkpoint')}
            for r in results if 'skipped' not in r]
    meta = {'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
            'machine': f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores, '
                       f'jax backend {_backend()}',
            'model': cfg.model.name, 'checkpoint': cfg.model.checkpoint, 'workdir': workdir,
            'eval_images': (fp or {}).get('images'), 'smoke_check': smoke,
            'full': bool(cfg.pipeline.full),
            'scan_implementation': cfg.model.scan_implementation or scan_api.default_implementation(),
            'quant': {k: v for k, v in cfg.quant.to_dict().items() if v is not None},
            'pipeline_seconds': time.time() - t_start}
    notes = [f'model {cfg.model.name} ({cfg.model.checkpoint or "random init"}); '
             f'{meta["eval_images"] or "no"} evaluation images; calibration: '
             f'{cfg.quant.calib_images} images (gen: at most what Gen made), {cfg.quant.epochs} '
             f'epochs, scale_space {cfg.quant.scale_space}, lr {cfg.quant.lr_weight:g}/'
             f'{cfg.quant.lr_act:g}; {meta["machine"]}.']
    if source is None:
      notes.append('evaluation skipped: no evaluation data; set --config.data.data_dir=PATH and '
                   'rerun (finished stages are skipped).')
    elif smoke:
      notes.append(f'SMOKE CHECK: evaluated on {fp["images"]} images of {source.name}, too few '
                   'for an accuracy; set --config.data.data_dir=PATH for the real split.')
    skipped = [r['name'] for r in results if 'skipped' in r]
    if skipped:
      notes.append(f'skipped (no data): {", ".join(skipped)}.')
    return write_report(reports_dir, fp, rows, meta, partial, title=f'Accuracy: {cfg.model.name}',
                        notes=notes)

  generated = False

  def walk(claimant: Optional[int]) -> list[dict[str, Any]]:
    """Every run in order, or (claimant = a worker's or a process's index) the runs it claims
    first; the main process rewrites the report after each."""
    nonlocal generated
    done = results if claimant is None else []   # the main walk's rows are the report's
    for i, (method, preset, src) in enumerate(runs):
      rcfg = run_config(cfg, method, preset, src)
      name = run_specs[i].name
      head = f'[pipeline] run {i + 1}/{len(runs)} {name}'
      if claimant is not None and not pipeline_workers.claim(workdir, name, claimant):
        log(f'{head}: taken by another worker')
        continue
      if src == 'real' and source is None:
        log(f'{head}: SKIPPED (needs real images; no data)')
        done.append({'name': name, 'method': method, 'preset': preset, 'calib_source': src,
                     'skipped': 'no data'})
        continue
      if src == 'gen' and not generated:
        log(f'{head}: generate (OuroMamba-Gen)')
        stage_generate(cfg, workdir, log)
        generated = True
      log(f'{head}: quantize')
      res = quantize_stage.quantize_run(rcfg, workdir, model=model, params=params, log=log)
      row = {'name': name, 'method': method, 'preset': preset, 'calib_source': src,
             'calib_images': res['calib_images'],
             'calibration_seconds': res['calibration_seconds'],
             'directory': res['directory'], 'checkpoint': res['checkpoint']}
      if source is not None:
        log(f'{head}: evaluate')
        settings = atomic.read_json(os.path.join(res['directory'], quantize_stage.SETTINGS_FILE))
        ev = evaluate_cached(os.path.join(res['directory'], f'eval_{data_cfg.eval_images}.json'),
                             {**base_key, 'settings': digests.settings_digest(settings)},
                             model, res['qparams'], data_cfg, source, log)
        row.update(top1=ev['top1'], top5=ev['top5'], eval_images=ev['images'])
        log(f'{head}: top-1 {100 * ev["top1"]:.2f}% (FP {100 * fp["top1"]:.2f}%)')
      done.append(row)
      if claimant is None:
        report(partial=True)
    return done

  def table_rows(rows):
    return [{k: v for k, v in r.items() if k not in ('directory', 'checkpoint')} for r in rows]

  def worker_result(claimant, rows):
    log(f'[pipeline] worker {claimant} done in {time.time() - t_start:.0f} s: '
        f'{", ".join(r["name"] for r in rows) or "no runs left"}')
    return {'fp': fp, 'runs': table_rows(rows), 'report': None, 'workdir': workdir}

  results: list[dict[str, Any]] = []
  processes = distributed.process_count()
  if (workers > 1 or processes > 1) and any(src == 'gen' for _, _, src in runs):
    log('[pipeline] generate (OuroMamba-Gen), before the runs are spread')
    stage_generate(cfg, workdir, log)      # every process takes part, on every device
    generated = True
  if processes > 1:   # each process claims runs and does them on its own devices
    if distributed.is_writer():
      pipeline_workers.clear_claims(workdir)
    distributed.barrier('pipeline claims cleared')
    with distributed.local_work():
      mine = walk(distributed.process_index())
    distributed.barrier('pipeline runs done')
    if not distributed.is_writer():
      return worker_result(distributed.process_index(), mine)
    with distributed.local_work():
      walk(None)
  elif worker >= 0:
    return worker_result(worker, walk(worker))
  else:
    if workers > 1:
      pipeline_workers.spread(workdir, pipeline_workers.main_argv(), workers, log)
    walk(None)
  md = report()
  log(f'[pipeline] done in {time.time() - t_start:.0f} s; report {md}')
  with open(md) as f:
    log('\n' + f.read())
  return {'fp': fp, 'runs': table_rows(results), 'report': md, 'workdir': workdir}


def _backend() -> str:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.default_backend()

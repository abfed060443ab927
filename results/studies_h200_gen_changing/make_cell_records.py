"""Writes study.cell.json records for the cells session 20 finished before the study mode wrote
them (one-off; run from the repository root on the unpacked studies.tgz of that session):

  python results/studies_h200_gen_changing/make_cell_records.py STUDY_DIR [FINISHED_RUNS]

STUDY_DIR holds <study>/<cell>/seed<s>/full/{reports,quant}. The config is the one .gpu/s20.sh
gave main.py (its command-line fields kept, as main.py keeps them), so each record's key is the
one the study mode computes for that cell; the rows are built from the cell's own pipeline
report (reports/accuracy.json) and outlier reports, as the study mode builds them.

FINISHED_RUNS (session 19's finished_runs.json: the same settings, run from 15afabf, whose
reports stayed on the card) adds records for the cells it holds completely that STUDY_DIR has
not: top-1 only (no outlier rate), each row naming where it comes from.

  python results/studies_h200_gen_changing/make_cell_records.py STUDY_DIR --same-settings

(session 21) gives a cell without a record the rows of another study's recorded cell that ran
the very same runs with the very same settings and seed (every field of the cell key but the
run list equal, e.g. `positives` K = 12, Gen's default, and `gen_loss` L_C + L_O's W4A4 run),
each row naming the record it was copied from.
"""
import copy
import json
import os
import sys

sys.path.insert(0, os.getcwd())

from configs import vim_t_cifar10  # pylint: disable=g-import-not-at-top,wrong-import-position
from ouromamba_jax.io import atomic  # pylint: disable=g-import-not-at-top,wrong-import-position
from ouromamba_jax.reports import outliers  # pylint: disable=g-import-not-at-top,wrong-import-position
from ouromamba_jax.stages import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from ouromamba_jax.stages import study  # pylint: disable=g-import-not-at-top,wrong-import-position
from ouromamba_jax.stages.runs import parse_runs  # pylint: disable=g-import-not-at-top,wrong-import-position

COMMAND_LINE = {'pipeline.full': True, 'gen.images_per_step': 128, 'gen.remat': True,
                'data.data_dir': '.data/cifar10', 'data.use_tfds': False,
                'compilation_cache': 'workdir/xla', 'mode': 'study', 'quant.report_images': 8}


def base_config(name):
  config = vim_t_cifar10.get_config()
  for dotted, value in COMMAND_LINE.items():
    study._set(config, dotted, value)  # pylint: disable=protected-access
  config.study.name = name
  pipeline.keep_fields(config, list(COMMAND_LINE) + ['study.name'])
  return config


def run_names(effective) -> list[str]:
  """The names of a cell's quantization runs (QuantRunSpec.name's default form)."""
  return sorted('_'.join(run) for run in parse_runs(effective.pipeline.runs))


def main(root):
  for name, label, s, cell_dir, effective in _cells(root):
    runs_dir = pipeline.runs_workdir(effective, cell_dir)
    report = atomic.read_json(os.path.join(runs_dir, 'reports', 'accuracy.json'))
    if (report is None or sorted(r['name'] for r in report['runs']) != run_names(effective)
        or os.path.exists(os.path.join(cell_dir, study.CELL_RECORD))):
      continue
    rows = [{'cell': label, 'seed': int(effective.seed), 'fp_top1': report['fp']['top1'], **r,
             'outlier_rate': outliers.mean_rate(os.path.join(runs_dir, 'quant', r['name']))}
            for r in report['runs']]
    atomic.write_json(os.path.join(cell_dir, study.CELL_RECORD),
                      {'key': study.cell_key(effective), 'rows': rows})
    print(name, label, s, [round(100 * r['top1'], 2) for r in rows])


def from_finished_runs(root, path):
  """Records of the cells `path` (finished_runs.json) holds completely, where none exists."""
  with open(path) as f:
    finished = json.load(f)
  by_cell = {}
  for r in finished['rows']:
    by_cell.setdefault((r['study'], r['cell'], r['seed']), []).append(r)
  for (name, label, s), runs in sorted(by_cell.items()):
    spec, config = study.study_named(name), base_config(name)
    cfg = study.cell_config(config, spec, dict(spec.cells)[label], config.seed + s)
    effective = pipeline.effective_config(cfg)
    cell_dir = os.path.join(root, name, study._slug(label), f'seed{s}')  # pylint: disable=protected-access
    if (sorted(r['run'] for r in runs) != run_names(effective)
        or os.path.exists(os.path.join(cell_dir, study.CELL_RECORD))):
      continue
    rows = [{'cell': label, 'seed': int(cfg.seed), 'fp_top1': finished['fp_top1'],
             'name': r['run'], 'top1': r['top1'], 'eval_images': r['images'],
             'outlier_rate': None,
             'recorded_from': f'{os.path.basename(os.path.dirname(path))}/finished_runs.json '
                              f'(project {finished["project"]}, {finished["date"]})'}
            for r in runs]
    os.makedirs(cell_dir, exist_ok=True)
    atomic.write_json(os.path.join(cell_dir, study.CELL_RECORD),
                      {'key': study.cell_key(effective), 'rows': rows})
    print(name, label, s, [round(100 * r['top1'], 2) for r in rows], '(finished_runs)')


def _cells(root):
  """(study, label, seed, cell_dir, effective config) of every cell of the studies in root."""
  for name in sorted(os.listdir(root)):
    if name not in study.STUDIES:
      continue
    spec, config = study.study_named(name), base_config(name)
    for label, overrides in spec.cells:
      for s in range(int(config.study.seeds)):
        cfg = study.cell_config(config, spec, overrides, config.seed + s)
        cell_dir = os.path.join(root, name, study._slug(label), f'seed{s}')  # pylint: disable=protected-access
        yield name, label, s, cell_dir, pipeline.effective_config(cfg)


def _settings_key(effective) -> str:
  """The cell key with the run list left out: equal for cells whose runs are made alike."""
  cfg = copy.deepcopy(effective)
  with cfg.unlocked():
    cfg.pipeline.runs = ''
  return study.cell_key(cfg)


def from_same_settings(root):
  """Records for cells whose runs another recorded cell made with the same settings and seed."""
  donors, missing = {}, []
  for name, label, s, cell_dir, effective in _cells(root):
    record = atomic.read_json(os.path.join(cell_dir, study.CELL_RECORD))
    if record is not None and record['key'] == study.cell_key(effective):
      donors.setdefault(_settings_key(effective), []).append((f'{name}/{label}/seed{s}', record))
    elif record is None:
      missing.append((name, label, s, cell_dir, effective))
  for name, label, s, cell_dir, effective in missing:
    wanted = run_names(effective)
    for source, record in donors.get(_settings_key(effective), []):
      rows = {r['name']: r for r in record['rows']}
      if not set(wanted) <= set(rows):
        continue
      copied = [{**rows[run], 'cell': label,
                 'recorded_from': f'{source} (the same run, settings and seed; '
                                  f'{rows[run].get("recorded_from", "its own report")})'}
                for run in wanted]
      atomic.write_json(os.path.join(cell_dir, study.CELL_RECORD),
                        {'key': study.cell_key(effective), 'rows': copied})
      print(name, label, s, [round(100 * r['top1'], 2) for r in copied], 'from', source)
      break


if __name__ == '__main__':
  if sys.argv[2:] == ['--same-settings']:
    from_same_settings(sys.argv[1])
  else:
    main(sys.argv[1])
    if len(sys.argv) > 2:
      from_finished_runs(sys.argv[1], sys.argv[2])

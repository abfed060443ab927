"""Mode `study`: cells and seeds become pipeline configs; rows aggregate to mean ± std; the
report files are written after every cell. The pipeline itself is replaced by a recorder (its
own tests run it); `preflight` checks every cell of every study on the testbed config."""
import json
import math
import os

import pytest

from configs import vim_t_cifar10
from ouromamba_jax.stages import gen_outputs
from ouromamba_jax.stages import pipeline
from ouromamba_jax.stages import preflight
from ouromamba_jax.stages import study as study_stage


def _config(name, seeds=2):
  config = vim_t_cifar10.get_config()
  config.mode = 'study'
  config.model.checkpoint = 'bundled'
  config.study.name = name
  config.study.seeds = seeds
  config.seed = 10
  return config


def _fake_pipeline(calls, rate=None):
  """Records each call's config; top-1 depends on the cell's k and the seed, FP is fixed. With
  `rate`, each run writes an outliers.json whose two sites average rate(cfg)."""
  def run(cfg, workdir, log):
    del log
    calls.append((cfg, workdir))
    if rate is not None:
      for r in cfg.pipeline.runs.split(','):
        directory = os.path.join(workdir, 'quant', '_'.join(r.split(':')))
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, 'outliers.json'), 'w') as f:
          json.dump({'sites': {'a': [rate(cfg)] * 3, 'b': [rate(cfg), rate(cfg)]}}, f)
    rows = [{'name': f'ouromamba_{p}_{s}', 'method': 'ouromamba', 'preset': p,
             'calib_source': s, 'top1': 0.5 + 0.01 * (cfg.quant.k or 3.0) + 0.001 * (cfg.seed - 10)}
            for p, s in (r.split(':')[1:] for r in cfg.pipeline.runs.split(','))]
    return {'fp': {'top1': 0.8}, 'runs': rows}
  return run


def _fake_generate(made):
  """Writes a synthetic set into the store folder it is given; records the folders."""
  def generate(cfg, workdir):
    path = gen_outputs.synthetic_path(workdir)
    if not os.path.isfile(path):
      made.append((workdir, cfg.seed))
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, 'w') as f:
        f.write(f'seed {cfg.seed} contrastive {cfg.gen.contrastive_weight}')
  return generate


def test_study_runs_every_cell_and_seed_and_reports_mean_and_spread(tmp_path):
  calls, logs, made = [], [], []
  report = study_stage.run(_config('k'), str(tmp_path), log=logs.append,
                           run_pipeline=_fake_pipeline(calls, rate=lambda c: 0.1 / c.quant.k),
                           run_generate=_fake_generate(made))
  # 4 values of k x 2 seeds, each its own pipeline workdir, mode pipeline, the study's runs
  assert len(calls) == 8
  assert [(c.quant.k, c.seed) for c, _ in calls] == [
      (k, s) for k in (2.0, 3.0, 4.0, 5.0) for s in (10, 11)]
  assert all(c.mode == 'pipeline' and c.pipeline.runs == 'ouromamba:w4a4:gen' for c, _ in calls)
  assert len({w for _, w in calls}) == 8
  assert calls[1][1].endswith(os.path.join('study', 'k', 'k=2.0', 'seed1'))
  summary = report['summary']
  assert [s['cell'] for s in summary] == ['k=2.0', 'k=3.0', 'k=4.0', 'k=5.0']
  first = summary[0]
  # seeds 10, 11: 100 * (0.52, 0.521) -> mean 52.05, sample std 0.0707
  assert first['seeds'] == 2 and math.isclose(first['top1_mean'], 52.05)
  assert math.isclose(first['top1_std'], 0.1 / math.sqrt(2), rel_tol=1e-9)
  assert math.isclose(first['fp_top1_mean'], 80.0)
  directory = tmp_path / 'study' / 'k'
  on_disk = json.loads((directory / 'study.json').read_text())
  assert on_disk['summary'] == summary and len(on_disk['rows']) == 8
  md = (directory / 'study.md').read_text()
  assert math.isclose(first['outlier_rate_mean'], 5.0) and first['outlier_rate_std'] == 0.0
  assert '| k=2.0 | ouromamba_w4a4_gen | 52.05 ± 0.07 | 2 | 80.00 | 5.00 ± 0.00 |' in md
  assert 'Time: 8 of the 8 (cell, seed) runs were timed' in md   # each cell's own wall time
  assert all(r['cell_seconds'] >= 0 for r in on_disk['rows'])
  assert on_disk['meta']['cell_time'][1:] == [8, 8]
  assert (directory / 'study.png').stat().st_size > 0
  (title, means, stds), (rate_title, rates, _) = study_stage._panels(
      study_stage.STUDIES['k'], summary)
  assert 'mean ± std' in title and 'outlier rate' in rate_title
  assert means['ouromamba_w4a4_gen'][0] == first['top1_mean']       # bars = the seed std
  assert stds['ouromamba_w4a4_gen'][0] == first['top1_std'] and len(rates['ouromamba_w4a4_gen']) == 4
  assert 'done' in logs[-1]
  # k does not change Gen: one synthetic set per seed, copied into every cell of that seed
  assert sorted(seed for _, seed in made) == [10, 11]
  assert sum('reusing the shared synthetic set' in m for m in logs) == 6
  for cfg, workdir in calls:
    copied = open(gen_outputs.synthetic_path(workdir)).read()
    assert copied == f'seed {cfg.seed} contrastive 1.0'


def test_cells_that_change_gen_get_their_own_set_and_cells_without_gen_none(tmp_path):
  made, calls = [], []
  study_stage.run(_config('gen_loss', seeds=1), str(tmp_path), log=lambda m: None,
                  run_pipeline=_fake_pipeline(calls), run_generate=_fake_generate(made))
  assert len(made) == 4                                        # lc+lo, lo, lc, pse+lo
  noise_dir = next(w for c, w in calls if 'noise' in c.pipeline.runs)
  assert not os.path.exists(gen_outputs.gen_dir(noise_dir))   # noise runs need no Gen
  lo_dir = next(w for c, w in calls if c.gen.contrastive_weight == 0.0 and c.gen.pse_weight == 0)
  assert open(gen_outputs.synthetic_path(lo_dir)).read() == 'seed 10 contrastive 0.0'


def test_cells_with_their_own_runs_and_n_refresh_l():
  config = _config('gen_loss', seeds=1)
  spec = study_stage.study_named('gen_loss')
  cells = {label: study_stage.cell_config(config, spec, o, 0) for label, o in spec.cells}
  assert cells['lo'].gen.contrastive_weight == 0.0 and cells['lc+lo'].gen.contrastive_weight == 1
  assert cells['pse+lo'].gen.pse_weight == 1.0
  assert cells['noise'].pipeline.runs == 'ouromamba:w4a4:noise,ouromamba:w4a8:noise'
  assert cells['lc'].pipeline.runs == 'ouromamba:w4a4:gen,ouromamba:w4a8:gen'
  spec = study_stage.study_named('n_refresh')
  last = study_stage.cell_config(_config('n_refresh'), spec, spec.cells[-1][1], 0)
  assert last.quant.n_refresh == 65           # L: the testbed's 64 patches + the class token
  assert config.gen.contrastive_weight == 1.0  # the base config is not touched
  config.pipeline.full = True                    # paper size does not undo a cell's value
  spec = study_stage.study_named('calib_size')
  small = study_stage.cell_config(config, spec, spec.cells[0][1], 0)
  assert pipeline.effective_config(small).quant.calib_images == 8
  assert pipeline.effective_config(small).quant.epochs == 10


@pytest.mark.parametrize('name', sorted(study_stage.STUDIES))
def test_preflight_accepts_every_cell_of_every_study(name):
  preflight.check(_config(name))


def test_bad_study_settings_are_one_line_errors():
  with pytest.raises(ValueError, match=r"study.name='fig9' is not a study; choose one of"):
    preflight.check(_config('fig9'))
  with pytest.raises(ValueError, match='study.seeds=0'):
    study_stage.run(_config('k', seeds=0), '/nonexistent', run_pipeline=_fake_pipeline([]),
                    run_generate=_fake_generate([]))
  spec = study_stage.Study('bad', 'x', (('c', {'quant.no_such_field': 1}),))
  with pytest.raises(ValueError, match="override 'quant.no_such_field'"):
    study_stage.cell_config(_config('k'), spec, spec.cells[0][1], 0)


def test_parts_split_the_cells_and_a_collecting_run_reports_them_all(tmp_path):
  calls, made = [], []
  config = _config('k')
  for i in range(3):
    config.study.part = f'{i}/3'
    part = study_stage.run(config, str(tmp_path), log=lambda m: None,
                           run_pipeline=_fake_pipeline(calls), run_generate=_fake_generate(made))
    assert part['part'] == f'{i}/3' and len(part['rows']) == (3, 3, 2)[i]  # 8 cells, 1 run each
  dirs = [w for _, w in calls]
  assert len(dirs) == 8 and len(set(dirs)) == 8                 # every (cell, seed) once
  assert not (tmp_path / 'study' / 'k' / 'study.json').exists()  # parts write no report
  config.study.part = ''
  report = study_stage.run(config, str(tmp_path), log=lambda m: None,
                           run_pipeline=_fake_pipeline(calls), run_generate=_fake_generate(made))
  assert len(calls) == 8       # the collecting run reads the parts' cell records, runs nothing
  assert len(report['summary']) == 4 and all(s['seeds'] == 2 for s in report['summary'])
  assert (tmp_path / 'study' / 'k' / 'study.json').exists()
  for bad in ('3/3', '1', 'a/b'):
    with pytest.raises(ValueError, match=r"study.part=.*give 'i/n'"):
      study_stage.parse_part(bad)


def test_finished_cells_are_read_from_their_record_not_run_again(tmp_path):
  """A study carried to another machine by its small files (cell.json, no Gen, no checkpoints)
  resumes: finished cells are read back; a cell whose settings changed runs again."""
  calls, made = [], []
  config = _config('k', seeds=1)
  first = study_stage.run(config, str(tmp_path), log=lambda m: None,
                          run_pipeline=_fake_pipeline(calls), run_generate=_fake_generate(made))
  assert len(calls) == 4
  for _, workdir in calls:                     # what does not travel: Gen's images
    os.remove(gen_outputs.synthetic_path(workdir))
  logs = []
  again = study_stage.run(config, str(tmp_path), log=logs.append,
                          run_pipeline=_fake_pipeline(calls), run_generate=_fake_generate(made))
  assert len(calls) == 4 and len(made) == 1    # nothing run, nothing generated again
  assert again['summary'] == first['summary']
  assert again['meta']['cell_time'] == first['meta']['cell_time']   # the recorded times kept
  assert sum('finished earlier (cell.json)' in m for m in logs) == 4
  config.data.data_dir = '/elsewhere'          # where the data lives is not a setting
  study_stage.run(config, str(tmp_path), log=lambda m: None,
                  run_pipeline=_fake_pipeline(calls), run_generate=_fake_generate(made))
  assert len(calls) == 4
  config.quant.n_refresh = 5                   # another setting: every cell runs again
  study_stage.run(config, str(tmp_path), log=lambda m: None,
                  run_pipeline=_fake_pipeline(calls), run_generate=_fake_generate(made))
  assert len(calls) == 8 and all(c.quant.n_refresh == 5 for c, _ in calls[4:])
  record = tmp_path / 'study' / 'k' / 'k=2.0' / 'seed0' / study_stage.CELL_RECORD
  record.write_text('{"key": ')                # damaged: that cell alone runs again
  study_stage.run(config, str(tmp_path), log=lambda m: None,
                  run_pipeline=_fake_pipeline(calls), run_generate=_fake_generate(made))
  assert len(calls) == 9 and calls[-1][0].quant.k == 2.0
  assert json.loads(record.read_text())['rows'][0]['cell'] == 'k=2.0'


def test_a_cell_without_evaluation_leaves_no_record(tmp_path):
  """No data, no top-1: a later run with data must evaluate, so nothing is recorded."""
  def no_data(cfg, workdir, log):
    del cfg, log
    return {'fp': None, 'runs': [{'name': 'ouromamba_w4a4_gen', 'top1': None,
                                  'skipped': 'no data'}]}
  study_stage.run(_config('k', seeds=1), str(tmp_path), log=lambda m: None,
                  run_pipeline=no_data, run_generate=_fake_generate([]))
  assert not list(tmp_path.glob(f'study/k/*/seed0/{study_stage.CELL_RECORD}'))


def test_report_only_reports_the_recorded_cells_and_runs_none(tmp_path):
  calls, made = [], []
  config = _config('k', seeds=1)
  config.study.part = '0/2'                    # cells k=2.0 and k=4.0 finish
  study_stage.run(config, str(tmp_path), log=lambda m: None,
                  run_pipeline=_fake_pipeline(calls), run_generate=_fake_generate(made))
  config.study.part = ''
  config.study.report_only = True
  logs = []
  report = study_stage.run(config, str(tmp_path), log=logs.append,
                           run_pipeline=_fake_pipeline(calls), run_generate=_fake_generate(made))
  assert len(calls) == 2                       # nothing run for the report
  assert [s['cell'] for s in report['summary']] == ['k=2.0', 'k=4.0']
  md = (tmp_path / 'study' / 'k' / 'study.md').read_text()
  assert '**Partial report** (`study.report_only`): 2 of the 4 (cell, seed) runs' in md
  assert sum('left out of the report' in m for m in logs) == 2 and 'partial report' in logs[-1]
  config.study.part = '1/2'
  with pytest.raises(ValueError, match='report_only=True .* leave study.part empty'):
    study_stage.run(config, str(tmp_path), run_pipeline=_fake_pipeline(calls),
                    run_generate=_fake_generate(made))

"""bench/outlier_sweep.py: its settings, its figure, and (slow) a smoke run on CPU."""
import json

import pytest
from PIL import Image
from tests.bench import load_bench


def test_settings_sweep_n_refresh_at_k3_and_k_at_n_refresh_10():
  sweep = load_bench('outlier_sweep')
  args, _ = sweep.parse_args(['--n_refresh=1,L', '--ks=2,5', '--smoke'])
  assert sweep.settings(args, 65) == [
      {'sweep': 'n_refresh', 'n_refresh': 1, 'k': 3.0},
      {'sweep': 'n_refresh', 'n_refresh': 65, 'k': 3.0},
      {'sweep': 'k', 'n_refresh': 10, 'k': 2.0}, {'sweep': 'k', 'n_refresh': 10, 'k': 5.0}]


def test_plot_draws_a_png_from_the_json(tmp_path):
  sweep = load_bench('outlier_sweep')
  cell = lambda s, r, k, v, e: {'sweep': s, 'n_refresh': r, 'k': k, 'vs_float': v,
                                'outlier_rate': {'entries': e}}
  report = {'model': 'vim_b', 'batch': 64, 'device': 'gpu: H200', 'seq_len': 197,
            'baseline': {'median_ms': 25.4},
            'results': [cell('n_refresh', 1, 3.0, 1.9, 0.01), cell('n_refresh', 197, 3.0, 2.4, 0.3),
                        cell('k', 10, 2.0, 2.3, 0.2), cell('k', 10, 5.0, 2.0, 0.01)]}
  path = tmp_path / 'sweep.json'
  path.write_text(json.dumps(report))
  sweep.main([f'--plot={path}'])
  image = Image.open(tmp_path / 'sweep.png')
  assert image.size[0] > 300 and image.size[1] > 300


@pytest.mark.slow
def test_smoke_run_times_every_setting(tmp_path):
  sweep = load_bench('outlier_sweep')
  out = tmp_path / 'sweep.json'
  report = sweep.main(['--smoke', '--n_refresh=1,L', '--ks=4', '--iters=1',
                       '--scan_kernel=xla', '--quant_kernel=xla', f'--out={out}',
                       f'--png={tmp_path / "sweep.png"}'])
  assert [c['n_refresh'] for c in report['results']] == [1, report['seq_len'], 10]
  for c in report['results']:
    assert c['median_ms'] > 0 and 0 <= c['outlier_rate']['entries'] <= 1
  assert json.loads(out.read_text())['baseline']['median_ms'] > 0
  assert (tmp_path / 'sweep.png').exists()

"""bench/e2e_latency.py on a tiny model (CPU): its whole code path runs and reports numbers.

The GPU run (Vim-T/S/B, Triton kernels) is not part of the test suite; here the kernels are
their XLA implementations (the Pallas ones have their own interpret-mode tests)."""
import importlib.util
import json
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_bench():
  spec = importlib.util.spec_from_file_location(
      'e2e_latency', os.path.join(_REPO, 'bench', 'e2e_latency.py'))
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def test_e2e_latency_smoke(tmp_path, capsys):
  bench = _load_bench()
  out = tmp_path / 'e2e.json'
  bench.main(['--smoke', '--variants=fp32_xla,bf16_pallas_scan,w4a4o8', '--batches=1',
              '--iters=1', '--scan_kernel=xla', '--quant_kernel=xla', f'--out={out}'])
  report = json.load(open(out))
  cells = report['results']
  assert [(r['model'], r['variant'], r['batch']) for r in cells] == [
      ('tiny', 'fp32_xla', 1), ('tiny', 'bf16_pallas_scan', 1), ('tiny', 'w4a4o8', 1)]
  for r in cells:
    assert 'error' not in r, r
    assert r['median_ms'] > 0 and r['images_per_s'] > 0 and r['compile_s'] > 0
  assert cells[1]['dtype'] == 'bfloat16' and cells[2]['preset'] == 'w4a4'
  assert cells[2]['quant_kernel'] == 'xla'
  rate = report['outlier_rates']['tiny/w4a4']
  assert 0.0 < rate['entries'] <= rate['tokens_with_outliers'] <= 1.0
  printed = capsys.readouterr().out
  assert 'w4a4o8' in printed and 'outlier rate tiny/w4a4' in printed

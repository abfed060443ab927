"""bench/triton_compile_time.py on the CPU: a form's Triton IR is captured from its lowering
for an abstract H100, and its compile is timed where the `triton` package exists (it is not a
dependency: without it the compile reports the child process's error)."""
import importlib.util
import json

import pytest
from tests.bench import load_bench


def test_lower_only_writes_the_triton_ir(tmp_path):
  bench = load_bench('triton_compile_time')
  out = tmp_path / 'compile.json'
  report = bench.main(['--forms=act_quant_c48_loop', '--lower_only', f'--out={out}',
                       f'--ir_dir={tmp_path}'])
  (cell,) = json.load(open(out))['results']
  assert cell == report['results'][0] and 'seconds' not in cell
  text = open(cell['ir']).read()
  assert text.startswith('module') and 'tt.func public @act_quant_sample' in text
  assert cell['ir_chars'] == len(text) and cell['num_warps'] == 2


def test_unknown_forms_are_refused_with_the_choices():
  bench = load_bench('triton_compile_time')
  with pytest.raises(SystemExit):
    bench.parse_args(['--forms=act_quant_c99_loop'])


def test_a_failed_or_slow_compile_is_reported_not_raised(tmp_path):
  bench = load_bench('triton_compile_time')
  bad = tmp_path / 'bad.ttir'
  bad.write_text('not a module')
  cell = bench.compile_seconds(str(bad), 1, 1, timeout=60)
  assert 'error' in cell and cell['seconds'] > 0
  slow = bench.compile_seconds(str(bad), 1, 1, timeout=1e-3)
  assert slow['error'].startswith('over the') and slow['seconds'] == 1e-3


@pytest.mark.skipif(importlib.util.find_spec('triton') is None, reason='needs the triton package')
def test_compiles_a_loop_kernel_with_triton(tmp_path):
  bench = load_bench('triton_compile_time')
  report = bench.main(['--forms=act_quant_c48_loop', f'--ir_dir={tmp_path}'])
  (cell,) = report['results']
  assert 'error' not in cell and cell['ptx_chars'] > 0

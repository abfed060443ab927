"""bench/e2e_latency.py on a tiny model (CPU): its code path runs and reports numbers.

The GPU run (Vim-T/S/B, Triton kernels) is not part of the test suite; here the kernels are
their XLA implementations (the Pallas ones have their own interpret-mode tests). The float
cells run in the default suite (~10 s); so does the quantized cell (~17 s: it builds a tree
with `quant.quantize`), since its outlier-rate pass is a path only a GPU run reaches otherwise.
"""
import json

import jax
import numpy as np
import pytest

from ouromamba_jax.models import vim
from tests.bench import load_bench


def _run(tmp_path, variants, *flags):
  out = tmp_path / 'e2e.json'
  load_bench('e2e_latency').main(['--smoke', f'--variants={variants}', '--batches=1',
                                  '--iters=1', '--scan_kernel=xla', '--quant_kernel=xla',
                                  f'--out={out}', *flags])
  report = json.load(open(out))
  for r in report['results']:
    assert 'error' not in r, r
    assert r['median_ms'] > 0 and r['images_per_s'] > 0 and r['compile_s'] > 0
  return report


def test_e2e_latency_smoke_float(tmp_path, capsys):
  report = _run(tmp_path, 'fp32_xla,bf16_pallas_scan')
  cells = report['results']
  assert [(r['model'], r['variant'], r['batch'], r['dtype']) for r in cells] == [
      ('tiny', 'fp32_xla', 1, 'float32'), ('tiny', 'bf16_pallas_scan', 1, 'bfloat16')]
  assert report['outlier_rates'] == {}
  fp32, bf16 = cells
  assert fp32['param_bytes'] == 2 * bf16['param_bytes'] > 0
  assert 0 < bf16['linear_weight_bytes'] < bf16['param_bytes']
  printed = capsys.readouterr().out
  assert 'cells: median ms / images per s' in printed and printed.rstrip().endswith(
      f'{cells[1]["median_ms"]:.3f} / {cells[1]["images_per_s"]:.0f}')  # the table comes last


def test_e2e_latency_times_a_tree_with_the_directions_stacked(tmp_path):
  """The case `stack_directions=0` times the tree as stored, next to the default (the
  library's inference layout for the batch: with the directions vmapped, as a GPU runs batch
  1, stacked once by `vim.with_directions_stacked`)."""
  report = _run(tmp_path, 'fp32_xla', '--batch_directions=1',
                '--cases=default,stack_directions=0')
  assert [r['case'] for r in report['results']] == ['default', 'stack_directions=0']


@pytest.mark.parametrize('batch_directions,stacking,stacked', [
    (True, -1, True), (False, -1, False), (True, 0, False), (False, 1, True)])
def test_each_batch_runs_the_tree_its_setting_names(batch_directions, stacking, stacked):
  bench = load_bench('e2e_latency')
  model = vim.VisionMamba(img_size=32, patch_size=8, depth=1, d_model=16, num_classes=3,
                          scan_implementation='xla', batch_directions=batch_directions)
  params = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
  tree = bench.batch_tree(model, params['params'], 1, stacking)
  assert vim.holds_stacked_directions(tree) == stacked


def test_weight_bytes_counts_quantized_linears_as_stored():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  bench = load_bench('e2e_latency')
  packed = bench.qtypes.QuantizedWeight(values=jnp.zeros((8, 4), jnp.uint8),  # (out, in / 2)
                                        scale=jnp.ones((8,), jnp.float32), bits=4, packed=True,
                                        in_features=8, mode='int')
  tree = {'layers_0': {'mixer': {'in_proj': {'kernel': packed},
                                 'out_proj': {'kernel': jnp.zeros((8, 4), jnp.float32)},
                                 'A_log': jnp.zeros((8, 2), jnp.float32)}}}
  got = bench.weight_bytes(tree, jnp.bfloat16)
  # int4 codes 32 B + fp32 steps 32 B; the float out_proj at bf16 64 B; A_log 32 B
  assert got == {'linear_weight_bytes': 32 + 32 + 64, 'param_bytes': 32 + 32 + 64 + 32}


def test_e2e_latency_smoke_quantized(tmp_path, capsys, monkeypatch):
  # The GPU's rule for small batches (directions vmapped, out_proj fed a DirectionMean) on
  # the CPU: the outlier-rate pass must still hand its interceptor arrays (session 27's first
  # GPU run failed there).
  from ouromamba_jax.models import vim  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(vim, 'directions_as_one_batch',
                      lambda setting, batch: True if setting is None else bool(setting))
  report = _run(tmp_path, 'w4a4o8')
  (cell,) = report['results']
  assert cell['preset'] == 'w4a4' and cell['quant_kernel'] == 'xla'
  rate = report['outlier_rates']['tiny/w4a4']
  assert 0.0 < rate['entries'] <= rate['tokens_with_outliers'] <= 1.0
  assert 'outlier rate tiny/w4a4' in capsys.readouterr().out


def test_profiling_variants_override_kernel_and_stay_out_of_the_default_grid():
  bench = load_bench('e2e_latency')
  args = bench.parse_args(['--smoke', '--depth=1', '--quant_kernel=triton'])
  assert args.variants == list(bench.DEFAULT_VARIANTS) and args.depth == 1
  assert 'w4a4o8_xla_kernels' not in args.variants
  base = bench.build_model('vim_t', depth=1, img_size=32, patch_size=8, d_model=32)
  ablated = bench.variant_model(base, bench.VARIANTS['w4a4o8_xla_kernels'], args)
  full = bench.variant_model(base, bench.VARIANTS['w4a4o8'], args)
  assert (ablated.quant_implementation, full.quant_implementation) == ('xla', 'triton')
  assert full.fuse_linear_inputs  # the model's default
  unfused_args = bench.parse_args(['--smoke', '--fuse_linear_inputs=0'])
  assert not bench.variant_model(base, bench.VARIANTS['w4a4o8'], unfused_args).fuse_linear_inputs
  assert bench.VARIANTS['w4a4o8_float_ssm'].preset == 'w4a4_float_ssm'


def test_library_switches_are_set_only_when_asked_and_restored(monkeypatch):
  bench = load_bench('e2e_latency')
  config, gemm = bench.act_quant_config, bench.mixed_gemm_config
  for attr in ('SMALL_GRID_PROGRAMS', 'TILE_ELEMENTS'):  # restored after the test
    monkeypatch.setattr(config, attr, getattr(config, attr))
  monkeypatch.setattr(gemm, 'SWEEP_TILES', 1)
  library = (config.SMALL_GRID_PROGRAMS, config.TILE_ELEMENTS, 1)
  switches = lambda: (config.SMALL_GRID_PROGRAMS, config.TILE_ELEMENTS, gemm.SWEEP_TILES)
  with bench.library_switches(bench.parse_args(['--smoke'])):
    assert switches() == library
  with bench.library_switches(bench.parse_args(['--smoke', '--act_quant_small_grid=0',
                                                '--act_quant_tile_elements=4096',
                                                '--gemm_sweep_tiles=0'])):
    assert switches() == (0, 4096, 0)
    # 4096 lanes: two samples per program at Vim-B's d_inner, where the default holds one
    assert config.ActQuantBlockConfig().resolve(1536, 64, 20)[1] == 2
  assert switches() == library


def test_a_switch_value_the_kernels_cannot_take_is_refused_by_name(capsys):
  bench = load_bench('e2e_latency')
  for argv in (['--act_quant_tile_elements=0'], ['--cases=act_quant_tile_elements=0'],
               ['--act_quant_small_grid=-2']):
    with pytest.raises(SystemExit):
      bench.parse_args(['--smoke', *argv])
    assert 'use -1 (the library default) or an int >=' in capsys.readouterr().err


def test_cases_are_parsed_and_bad_ones_refused_with_the_form(capsys):
  bench = load_bench('e2e_latency')
  args = bench.parse_args(['--smoke',
                           '--cases=default,fuse_linear_inputs=1+act_quant_small_grid=0'])
  assert args.case_settings == {'default': {},
                                'fuse_linear_inputs=1+act_quant_small_grid=0':
                                    {'fuse_linear_inputs': 1, 'act_quant_small_grid': 0}}
  both = bench.case_args(args, 'fuse_linear_inputs=1+act_quant_small_grid=0')
  assert (both.fuse_linear_inputs, both.act_quant_small_grid, both.iters) == (1, 0, args.iters)
  for bad in ('fuse=1', 'fuse_linear_inputs', 'fuse_linear_inputs=yes'):
    with pytest.raises(SystemExit):
      bench.parse_args([f'--cases={bad}'])
    assert 'is not FLAG=INT with FLAG from' in capsys.readouterr().err


def test_cases_run_every_variant_in_one_process_under_their_switches(tmp_path, monkeypatch,
                                                                      capsys):
  """Each case's cells are lowered under its library switches (read while tracing) and model
  fields and compiled under its XLA options, the switches are restored after, and the rows and
  the table name the case."""
  bench = load_bench('e2e_latency')
  seen, options = [], []
  lower, compile_lowered = bench.lower_forward, bench.compile_lowered
  monkeypatch.setattr(bench, 'lower_forward', lambda m, *a: (
      seen.append((m.fuse_linear_inputs, m.scan_blocks,
                   bench.act_quant_config.SMALL_GRID_PROGRAMS)),
      lower(m, *a))[1])
  monkeypatch.setattr(bench, 'compile_lowered', lambda low, s, opts: (
      options.append(opts), compile_lowered(low, s, opts))[1])
  small_grid = bench.act_quant_config.SMALL_GRID_PROGRAMS
  out = tmp_path / 'e2e.json'
  bench.main(['--smoke', '--variants=bf16_pallas_scan', '--batches=1', '--iters=1',
              '--scan_kernel=xla', '--cases=default,fuse_linear_inputs=0+act_quant_small_grid=0'
              '+scan_blocks=0+xla_dynamic_slice_fusion=1+xla_command_buffer=0', f'--out={out}'])
  assert seen == [(True, True, small_grid), (False, False, 0)]
  assert options == [{}, {'xla_gpu_enable_dynamic_slice_fusion': True,
                          'xla_gpu_enable_command_buffer': ''}]
  assert bench.act_quant_config.SMALL_GRID_PROGRAMS == small_grid
  rows = json.load(open(out))['results']
  assert [(r['variant'], r['case']) for r in rows] == [
      ('bf16_pallas_scan', 'default'),
      ('bf16_pallas_scan',
       'fuse_linear_inputs=0+act_quant_small_grid=0+scan_blocks=0+xla_dynamic_slice_fusion=1'
       '+xla_command_buffer=0')]
  assert all(r['median_ms'] > 0 for r in rows)
  assert ('bf16_pallas_scan [fuse_linear_inputs=0+act_quant_small_grid=0+scan_blocks=0'
          in capsys.readouterr().out)


def test_e2e_latency_rejects_unknown_kernels_up_front():
  bench = load_bench('e2e_latency')
  for flag in ('--scan_kernel=cuda', '--quant_kernel=cutlass', '--models=vim_xl'):
    with pytest.raises(SystemExit):
      bench.parse_args([flag])


def test_repeated_blocks_spread_the_quantized_blocks_over_the_depth():
  bench = load_bench('e2e_latency')

  class TwoBlocks:
    depth = 2

  tree = {'layers_0': 'a', 'layers_1': 'b', 'head': 'h'}
  out = bench.repeated_blocks(TwoBlocks(), tree, 5)
  assert out == {'head': 'h', 'layers_0': 'a', 'layers_1': 'b', 'layers_2': 'a',
                 'layers_3': 'b', 'layers_4': 'a'}

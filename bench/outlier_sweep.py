"""Latency and outlier rate of the W4A4O8 forward vs n_refresh and k (the paper's Fig. 9d).

  python bench/outlier_sweep.py --model=vim_b --batch=64 --out=outlier_sweep.json   # GPU
  python bench/outlier_sweep.py --smoke --out=/tmp/sweep.json                       # CPU check

One process, one device: the float baseline (bf16 + Pallas scan) and, per setting, a W4A4O8
tree built as in `bench/e2e_latency.py` (RTN over `--calib_depth` blocks, repeated over the
depth) with the outlier threshold mu + k sigma and reset period n_refresh of that setting, its
median latency and measured outlier rate. Settings: n_refresh in `--n_refresh` at k = 3
(`L` = the sequence length: the set is never reset), and k in `--ks` at n_refresh = 10. The
JSON is rewritten after every cell; with `--png` (or `--plot=JSON` alone, e.g. on a machine
without the GPU) both curves are drawn next to the float baseline.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import e2e_latency  # pylint: disable=g-import-not-at-top,wrong-import-position
from ouromamba_jax.io import atomic  # pylint: disable=g-import-not-at-top,wrong-import-position
from ouromamba_jax.models import build_model  # pylint: disable=g-import-not-at-top,wrong-import-position
from ouromamba_jax.reports import curves  # pylint: disable=g-import-not-at-top,wrong-import-position

DEFAULT_K, DEFAULT_REFRESH = 3.0, 10


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--model', default='vim_b', choices=list(e2e_latency.MODELS))
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--n_refresh', default='1,5,10,20,L',
                 help="comma-separated reset periods at k = 3 ('L': never reset)")
  p.add_argument('--ks', default='2,3,4,5', help='comma-separated thresholds at n_refresh = 10')
  p.add_argument('--out', default='', help='JSON file for the results')
  p.add_argument('--png', default='', help='also draw the curves into this PNG')
  p.add_argument('--plot', default='', help='only draw an existing JSON (PNG beside it)')
  p.add_argument('--smoke', action='store_true', help='tiny model on CPU, 1 timed call')
  args, rest = p.parse_known_args(argv)
  e2e_args = e2e_latency.parse_args(rest + (['--smoke'] if args.smoke else []) + [
      '--models', 'tiny' if args.smoke else args.model, '--batches', str(args.batch)])
  return args, e2e_args


def settings(args, seq_len: int) -> list[dict[str, Any]]:
  """[{'n_refresh', 'k', 'sweep'}] in the order they are run."""
  refresh = [seq_len if r.strip().upper() == 'L' else int(r) for r in args.n_refresh.split(',')]
  out = [{'sweep': 'n_refresh', 'n_refresh': r, 'k': DEFAULT_K} for r in refresh]
  out += [{'sweep': 'k', 'n_refresh': DEFAULT_REFRESH, 'k': float(k)} for k in args.ks.split(',')]
  return out


def _timed(model, tree, images, e2e_args) -> dict[str, Any]:
  with e2e_latency.library_switches(e2e_args):
    compiled, compile_s = e2e_latency.compile_forward(model, tree, images)
  timing = e2e_latency.time_forward(compiled, tree, images, e2e_args.iters, e2e_args.warmup)
  return {'compile_s': compile_s, **timing}


def run(args, e2e_args) -> dict[str, Any]:
  registry_name, overrides = e2e_latency.MODELS[e2e_args.models[0]]
  base = build_model(registry_name, scan_implementation='xla', **overrides)
  params = jax.jit(base.init)(jax.random.key(e2e_args.seed),
                              e2e_latency._images(base, 1, 0))['params']  # pylint: disable=protected-access
  images = e2e_latency._images(base, args.batch, e2e_args.seed + 3)  # pylint: disable=protected-access
  device = jax.devices()[0]
  report = {'device': f'{device.platform}: {device.device_kind}', 'jax': jax.__version__,
            'model': e2e_args.models[0], 'batch': args.batch, 'seq_len': base.seq_len,
            'baseline': None, 'results': []}
  float_variant = e2e_latency.VARIANTS['bf16_pallas_scan']
  report['baseline'] = {'variant': 'bf16_pallas_scan', **_timed(
      e2e_latency.variant_model(base, float_variant, e2e_args),
      e2e_latency.cast_float_leaves(params, e2e_latency.DTYPES[float_variant.dtype]), images,
      e2e_args)}
  e2e_latency.write_report(report, args.out)
  variant = e2e_latency.VARIANTS['w4a4o8']
  for setting in settings(args, base.seq_len):
    e2e_args.outlier_k, e2e_args.n_refresh = setting['k'], setting['n_refresh']
    tree, rate = e2e_latency.quantized_tree(base, params, variant.preset, e2e_args)
    tree = e2e_latency.cast_float_leaves(tree, e2e_latency.DTYPES[variant.dtype])
    cell = {**setting, 'variant': 'w4a4o8', 'outlier_rate': rate,
            **_timed(e2e_latency.variant_model(base, variant, e2e_args), tree, images, e2e_args)}
    cell['vs_float'] = cell['median_ms'] / report['baseline']['median_ms']
    report['results'].append(cell)
    print(f"{setting['sweep']:>9} n_refresh {setting['n_refresh']:>4} k {setting['k']:>4}: "
          f"{cell['median_ms']:9.3f} ms ({cell['vs_float']:.2f}x float), outliers "
          f"{100 * rate['entries']:.2f}% of entries", flush=True)
    e2e_latency.write_report(report, args.out)
  return report


def plot(report, path: str) -> None:
  """Four panels: latency / float latency and outlier rate, vs n_refresh (k = 3) and vs k
  (n_refresh = 10); the settings are the points in order, their values in the panel titles."""
  panels = []
  for sweep in ('n_refresh', 'k'):
    cells = [c for c in report['results'] if c['sweep'] == sweep]
    values = ','.join('L' if sweep == 'n_refresh' and c[sweep] == report['seq_len']
                      else f'{c[sweep]:g}' for c in cells)
    panels.append((f'latency / float, {sweep} = {values}',
                   {'w4a4o8': [c['vs_float'] for c in cells], 'float': [1.0] * len(cells)}))
    panels.append((f'outlier % of entries, {sweep} = {values}',
                   {'w4a4o8': [100 * c['outlier_rate']['entries'] for c in cells]}))
  caption = (f"{report['model']} batch {report['batch']}, {report['device']}; float = bf16 + "
             f"Pallas scan {report['baseline']['median_ms']:.2f} ms")
  curves.write_png(path, panels, x_label='setting', columns=2, caption=caption)


def main(argv=None):
  args, e2e_args = parse_args(argv)
  if args.plot:
    report = atomic.read_json(args.plot)
    plot(report, os.path.splitext(args.plot)[0] + '.png')
    return report
  report = run(args, e2e_args)
  if args.png:
    plot(report, args.png)
  return report


if __name__ == '__main__':
  main()

"""VMamba's SS2D scan (four directions in one selective-scan call) per stage: Pallas vs XLA.

  python bench/ss2d_scan.py --out=ss2d_scan.json            # GPU: VMamba-T and -B, batch 64, 224
  python bench/ss2d_scan.py --smoke --out=/tmp/ss2d.json    # tiny shapes, CPU interpret mode

For each released variant and stage s (grid 56 / 2^s at 224², d_inner = dims 2^s ssm_ratio,
d_state 1, K = 4 directions) it times `models.vmamba.ss2d_scan` (what the model runs: directions
folded into the batch, block-diagonal B/C, the D skip) with `implementation='triton'` (the
Pallas kernel) and 'associative' (XLA), and reports ms per call, the relative difference of the
outputs, and the per-forward scan time sum_s depth_s * t_s. Median of `--trials` rounds of
`--inner` calls over rotated input copies (L2 spilled), after warm-up; one process, one device.
"""
from __future__ import annotations

import functools
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kernels_pallas import _bench  # pylint: disable=g-import-not-at-top,wrong-import-position
from ouromamba_jax.models import registry  # pylint: disable=g-import-not-at-top,wrong-import-position
from ouromamba_jax.models import vmamba  # pylint: disable=g-import-not-at-top,wrong-import-position

VARIANTS = ('vmamba_t', 'vmamba_b')
IMPLEMENTATIONS = ('triton', 'associative')
DIRECTIONS = 4


def stage_shapes(name: str, batch: int, smoke: bool = False) -> list[dict[str, Any]]:
  """[{stage, depth, batch, length, d_inner, d_state}] of a registered VMamba at its image size
  (smoke: one tiny stage)."""
  if smoke:
    return [{'stage': 0, 'depth': 1, 'batch': 2, 'length': 16, 'd_inner': 8, 'd_state': 1}]
  model = registry.build_model(name)
  grid = model.img_size // model.patch_size
  out = []
  for s, depth in enumerate(model.depths):
    side = grid // 2 ** s
    out.append({'stage': s, 'depth': depth, 'batch': batch, 'length': side * side,
                'd_inner': int(model.dims * 2 ** s * model.ssm_ratio), 'd_state': model.d_state})
  return out


def make_inputs(key, shape: dict[str, Any]):
  """(xs, deltas, bs, cs, a, ds) as `ss2d_scan` takes them, bf16 activations."""
  b, k, length, d, n = shape['batch'], DIRECTIONS, shape['length'], shape['d_inner'], \
      shape['d_state']
  keys = jax.random.split(key, 6)
  xs = jax.random.normal(keys[0], (b, k, length, d), jnp.bfloat16)
  deltas = (jax.random.normal(keys[1], (b, k, length, d)) * 0.5 - 2.0).astype(jnp.bfloat16)
  bs = jax.random.normal(keys[2], (b, k, length, n), jnp.bfloat16)
  cs = jax.random.normal(keys[3], (b, k, length, n), jnp.bfloat16)
  a = -jnp.exp(jax.random.normal(keys[4], (k * d, n)) * 0.5)
  ds = jax.random.normal(keys[5], (k * d,))
  return xs, deltas, bs, cs, a, ds


def input_bytes(shape: dict[str, Any]) -> int:
  b, length, d, n = shape['batch'], shape['length'], shape['d_inner'], shape['d_state']
  return DIRECTIONS * b * length * (2 * d + 2 * n) * 2


def run(args) -> dict[str, Any]:
  rows = []
  for name in (['tiny'] if args.smoke else VARIANTS):
    for shape in stage_shapes(name, args.batch, args.smoke):
      copies = _bench.n_copies(input_bytes(shape), args.smoke)
      arg_sets = [make_inputs(jax.random.key(i), shape) for i in range(copies)]
      row, outs = dict(shape, model=name), {}
      for impl in IMPLEMENTATIONS:
        fn = jax.jit(functools.partial(vmamba.ss2d_scan, implementation=impl))
        outs[impl] = fn(*arg_sets[0])
        row[f'{impl}_ms'] = 1e3 * _bench.time_fn(fn, arg_sets, warmup=2, trials=args.trials,
                                                 inner=args.inner, smoke=args.smoke)
      ref = outs['associative'].astype(jnp.float32)
      row['rel_diff'] = float(jnp.linalg.norm(outs['triton'].astype(jnp.float32) - ref)
                              / jnp.linalg.norm(ref))
      row['speedup'] = row['associative_ms'] / row['triton_ms']
      rows.append(row)
  totals = {}
  for name in {r['model'] for r in rows}:
    own = [r for r in rows if r['model'] == name]
    totals[name] = {f'{impl}_ms_per_forward': sum(r['depth'] * r[f'{impl}_ms'] for r in own)
                    for impl in IMPLEMENTATIONS}
  return {'device': str(jax.devices()[0].device_kind), 'batch': rows[0]['batch'], 'rows': rows,
          'per_forward': totals}


def print_table(report: dict[str, Any]) -> None:
  print(f'SS2D scan, {report["device"]}, batch {report["batch"]} (ms per call)')
  print('| model | stage | L | d_inner | Pallas | XLA assoc. | XLA / Pallas | rel. diff |')
  print('|---|---:|---:|---:|---:|---:|---:|---:|')
  for r in report['rows']:
    print(f'| {r["model"]} | {r["stage"]} | {r["length"]} | {r["d_inner"]} | '
          f'{r["triton_ms"]:.3f} | {r["associative_ms"]:.3f} | {r["speedup"]:.2f} | '
          f'{r["rel_diff"]:.1e} |')
  for name, t in sorted(report['per_forward'].items()):
    print(f'{name}: scans per forward (sum of depth x stage) Pallas '
          f'{t["triton_ms_per_forward"]:.2f} ms, XLA {t["associative_ms_per_forward"]:.2f} ms')


def main(argv=None):
  return _bench.main(__doc__, run, print_table, argv, add_options=lambda p: p.add_argument(
      '--batch', type=int, default=64, help='images per call'))


if __name__ == '__main__':
  main()

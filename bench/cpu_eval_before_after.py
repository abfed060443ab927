"""CPU forward throughput of the testbed, before vs after a change of the scan / integer GEMM.

  git archive 8de16bb | tar -x -C /tmp/before
  PYTHONPATH=. python bench/cpu_eval_before_after.py --before=/tmp/before --batch=64 --rounds=3

Loads the `before` tree's `_scan_sequential` (selective_scan reference) and `accumulators_xla`
(mixed GEMM reference) beside this tree's, compiles the bundled `vim_t_cifar10` forward with
each (FP, RTN W4A4 fake and int), and times them interleaved in one process: on a shared
machine the load moves more than the code does, and interleaving lets both sides see the same
load (BENCHMARKS.md, issue 16). Prints images/s (min of the rounds) and the max logit change.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kernels_pallas.mixed_gemm import reference as gemm_ref  # pylint: disable=g-import-not-at-top,wrong-import-position
from kernels_pallas.selective_scan import reference as scan_ref  # pylint: disable=g-import-not-at-top,wrong-import-position
from ouromamba_jax import checkpoints  # pylint: disable=g-import-not-at-top,wrong-import-position
from ouromamba_jax.models import build_model  # pylint: disable=g-import-not-at-top,wrong-import-position
from ouromamba_jax.quant import api  # pylint: disable=g-import-not-at-top,wrong-import-position


def _module(path: str):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3] + '_before', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--before', required=True, help='a checkout of the "before" tree')
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--rounds', type=int, default=3)
  args = p.parse_args(argv)
  old_scan = _module(os.path.join(args.before, 'kernels_pallas/selective_scan/reference.py'))
  old_gemm = _module(os.path.join(args.before, 'kernels_pallas/mixed_gemm/reference.py'))
  sides = {'before': (old_scan._scan_sequential, old_gemm.accumulators_xla),  # pylint: disable=protected-access
           'after': (scan_ref._scan_sequential, gemm_ref.accumulators_xla)}  # pylint: disable=protected-access
  model = build_model('vim_t_cifar10')
  params = checkpoints.load_checkpoint('bundled', model)
  x = jnp.asarray(np.random.RandomState(0).randn(args.batch, 32, 32, 3).astype(np.float32))
  q, _ = api.quantize(model, params, x[:4], 'w4a4', method='rtn', log=lambda _: None)
  trees = {'fp': params, 'fake': q, 'int': api.to_integer(q)}
  compiled = {}
  for side, (scan, gemm) in sides.items():
    scan_ref._scan_sequential, gemm_ref.accumulators_xla = scan, gemm  # pylint: disable=protected-access
    for kind, tree in trees.items():
      forward = jax.jit(lambda p, x: model.apply({'params': p}, x))
      compiled[side, kind] = forward.lower(tree, x).compile()
  times = {key: [] for key in compiled}
  logits = {}
  for _ in range(args.rounds):
    for (side, kind), fn in compiled.items():
      t0 = time.perf_counter()
      logits[side, kind] = fn(trees[kind], x).block_until_ready()
      times[side, kind].append(time.perf_counter() - t0)
  for kind in trees:
    before, after = min(times['before', kind]), min(times['after', kind])
    change = float(jnp.abs(logits['before', kind] - logits['after', kind]).max())
    print(f'{kind}: before {args.batch / before:.1f} images/s  after {args.batch / after:.1f} '
          f'images/s  ({before / after:.2f}x; max |logit change| {change:.1e})')


if __name__ == '__main__':
  main()

"""Where the GPU time of one end-to-end forward goes: per-kernel totals from a JAX profile.

  python bench/profile_e2e.py --model=vim_b --batch=64 --variants=bf16_pallas_scan,w4a4o8

Each variant of `bench/e2e_latency.py`, on the tree layout that bench times at this batch
(`--stack_directions`), is compiled, warmed up and run `--iters` times under
`jax.profiler.trace`; the trace's device events (the GPU streams) are summed by kernel name and
divided by `--iters`, so each row is the per-forward time of one kernel family. The same script
on CPU profiles the host threads instead (only a check that it runs). Writes a JSON with the
top rows per variant (`--out`) and prints a table. Why not only latency differences: a
difference says how much a part costs, the profile says which kernel pays it. With
`--by_source` the same time is also summed by the model line that made each XLA kernel (the
compiled module's metadata, `hlo_sources.py`): glue fusions say where they come from. With
`--hlo_dir` each variant's optimized HLO and per-instance kernel times are written too, for the
kernels no source line names (XLA's copies).
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import e2e_latency  # pylint: disable=g-import-not-at-top,wrong-import-position
import hlo_sources  # pylint: disable=g-import-not-at-top,wrong-import-position
from ouromamba_jax.io import atomic  # pylint: disable=g-import-not-at-top,wrong-import-position


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--model', default='vim_b', choices=list(e2e_latency.MODELS))
  p.add_argument('--variants', type=e2e_latency._csv(str),  # pylint: disable=protected-access
                 default=['bf16_pallas_scan', 'w4a4o8'])
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--depth', type=int, default=0, help="0 = the model's own depth")
  p.add_argument('--iters', type=int, default=5)
  p.add_argument('--top', type=int, default=25, help='kernel rows kept per variant')
  p.add_argument('--by_source', action='store_true',
                 help='also sum the time by the source line of each XLA kernel')
  p.add_argument('--hlo_dir', default='',
                 help='also write each variant\'s optimized HLO and its per-kernel (not per-family) '
                 'times there, to trace glue kernels without a source line (copies) offline')
  p.add_argument('--out', default='')
  args, rest = p.parse_known_args(argv)
  # Everything else (--scan_kernel, --quant_kernel, --outlier_k, ...) is e2e_latency's.
  e2e_args = e2e_latency.parse_args(rest + ['--models', args.model, '--batches', str(args.batch),
                                            '--variants', ','.join(args.variants),
                                            '--depth', str(args.depth)])
  return args, e2e_args


def _kernel_family(name: str) -> str:
  """Kernel names carry shapes and numbered suffixes (`fusion_123`, `loop_add_fusion.4`,
  Pallas kernels' `act_quant_sample__1`):
  strip them so repeated kernels of the 24 blocks add up in one row."""
  return re.sub(r'([._]+\d+)+$', '', name)


def device_events(trace_path: str) -> dict[str, tuple[float, int]]:
  """{kernel name: (total microseconds, launches)} over the device (GPU) processes of a
  trace.json.gz; on CPU-only traces, over every process (a smoke check of this script). The
  launches say whether a kernel's time is work or a fixed cost paid per launch."""
  with gzip.open(trace_path, 'rt') as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  names = {e['pid']: e.get('args', {}).get('name', '') for e in events
           if e.get('ph') == 'M' and e.get('name') == 'process_name'}
  gpu_pids = {pid for pid, name in names.items() if '/device:GPU' in name}
  totals, launches = collections.Counter(), collections.Counter()
  for e in events:
    if e.get('ph') != 'X' or 'dur' not in e:
      continue
    if gpu_pids and e['pid'] not in gpu_pids:
      continue
    totals[e.get('name', '?')] += float(e['dur'])
    launches[e.get('name', '?')] += 1
  return {name: (us, launches[name]) for name, us in totals.items()}


def by_family(events: dict[str, tuple[float, int]]) -> dict[str, tuple[float, int]]:
  """`device_events` with the kernels of one family (names up to their numbered suffixes)
  added up: (total µs, launches)."""
  families = collections.defaultdict(lambda: (0.0, 0))
  for name, (us, n) in events.items():
    total, count = families[_kernel_family(name)]
    families[_kernel_family(name)] = (total + us, count + n)
  return dict(families)


def profile_variant(model, tree, images, iters: int, with_sources: bool = False,
                    options=None) -> tuple[dict[str, tuple[float, int]], dict[str, str], str]:
  """({kernel name: (µs, launches) per forward}, {HLO instruction: source label} or {}
  without `with_sources`, the optimized HLO text) of one variant, compiled under XLA
  `options` (e2e_latency's compile-option flags)."""
  compiled, _ = e2e_latency.compile_forward(model, tree, images, options)
  for _ in range(3):
    jax.block_until_ready(compiled(tree, images))
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp):
      for _ in range(iters):
        jax.block_until_ready(compiled(tree, images))
    paths = glob.glob(os.path.join(tmp, 'plugins', 'profile', '*', '*.trace.json.gz'))
    if not paths:
      raise RuntimeError(f'jax.profiler wrote no trace.json.gz under {tmp}')
    events = device_events(paths[0])
  hlo = compiled.as_text()
  sources = hlo_sources.instruction_sources(hlo) if with_sources else {}
  return {k: (us / iters, n / iters) for k, (us, n) in events.items()}, sources, hlo


def _write_hlo(directory: str, stem: str, hlo: str, per_kernel) -> None:
  """`stem.hlo.txt.gz` (the optimized module) and `stem.kernels.json` ({kernel: [µs,
  launches]} per forward, every instance apart) in `directory`."""
  os.makedirs(directory, exist_ok=True)
  atomic.write_bytes(os.path.join(directory, f'{stem}.hlo.txt.gz'), gzip.compress(hlo.encode()))
  atomic.write_json(os.path.join(directory, f'{stem}.kernels.json'),
                    {k: list(v) for k, v in sorted(per_kernel.items(), key=lambda kv: -kv[1][0])})


def main(argv=None):
  args, e2e_args = parse_args(argv)
  registry_name, overrides = e2e_latency.MODELS[args.model]
  if args.depth:
    overrides = {**overrides, 'depth': args.depth}
  base = e2e_latency.build_model(registry_name, scan_implementation='xla', **overrides)
  params = jax.jit(base.init)(jax.random.key(0), e2e_latency._images(base, 1, 0))['params']  # pylint: disable=protected-access
  trees = e2e_latency._variant_trees(base, params, e2e_args, {}, {}, args.model)  # pylint: disable=protected-access
  images = e2e_latency._images(base, args.batch, 3)  # pylint: disable=protected-access
  device = jax.devices()[0]
  report = {'device': f'{device.platform}: {device.device_kind}', 'model': args.model,
            'batch': args.batch, 'depth': args.depth or base.depth,
            'date': time.strftime('%Y-%m-%d'), 'variants': {}}
  for name, tree in trees.items():
    if isinstance(tree, Exception):
      raise tree
    model = e2e_latency.variant_model(base, e2e_latency.VARIANTS[name], e2e_args)
    tree = e2e_latency.batch_tree(model, tree, args.batch, e2e_args.stack_directions)
    with e2e_latency.library_switches(e2e_args):
      per_kernel, sources, hlo = profile_variant(model, tree, images, args.iters,
                                                 args.by_source,
                                                 e2e_latency.compiler_options(e2e_args))
    if args.hlo_dir:
      _write_hlo(args.hlo_dir, f'{args.model}_b{args.batch}_{name}', hlo, per_kernel)
    rows = sorted(((kernel, us, n) for kernel, (us, n) in by_family(per_kernel).items()),
                  key=lambda row: -row[1])
    total = sum(us for us, _ in per_kernel.values())
    report['variants'][name] = {'total_us': total, 'launches': sum(n for _, n in
                                                                   per_kernel.values()),
                                'kernels': rows[:args.top]}  # (family, µs, launches)
    print(f'\n== {args.model} {name} batch {args.batch}: device time {total / 1e3:.3f} ms '
          f'per forward ({len(rows)} kernel families, {report["variants"][name]["launches"]:.0f}'
          ' launches)')
    print(f'{"ms":>9s} {"share":>6s} {"launches":>8s} {"µs each":>8s}  kernel family')
    for kernel, us, n in rows[:args.top]:
      print(f'{us / 1e3:9.3f} {100 * us / total:5.1f}% {n:8.0f} {us / max(n, 1):8.1f}  '
            f'{kernel[:100]}')
    if args.by_source:
      source_rows = hlo_sources.by_source({k: us for k, (us, _) in per_kernel.items()},
                                          sources)[:args.top]
      report['variants'][name]['by_source'] = source_rows
      print('-- by source line (µs per forward, kernels):')
      for label, us, count in source_rows:
        print(f'{us / 1e3:9.3f} ms {count:5d}  {label[:120]}')
  if args.out:
    atomic.write_json(args.out, report)
  return report


if __name__ == '__main__':
  main()

"""What every kernel microbenchmark shares: H100 roofline constants, timing, report output."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from typing import Any, Callable

import jax

HBM_BYTES_PER_S = 3.0e12    # H100 device-to-device copy, bytes read + written
L2_SPILL_BYTES = 150 << 20  # input sets above the 50 MB L2 three times over are read from HBM


# --smoke compiles the interpreted kernels (long unrolled XLA programs) on a CPU, where LLVM's
# optimisation of them is much of the run's time and its timings mean nothing anyway.
SMOKE_COMPILER_OPTIONS = {'xla_backend_optimization_level': 0}


def jit(fn, smoke: bool, **kwargs):
  """jax.jit(fn), compiled unoptimised under --smoke."""
  if smoke:
    kwargs['compiler_options'] = SMOKE_COMPILER_OPTIONS
  return jax.jit(fn, **kwargs)


# Calls per dispatch: a timed program calls the op once per rotating input set, back to back
# (`chained`), so an op shorter than JAX's host dispatch of a jitted call (tens of us) is timed
# on the device, not on the host. With one dispatch per call, session 34's bench put every
# batch-1 GEMM, cuBLAS included, at 35-45 us whatever its work; chained, they take 8-26 us, and
# act_quant at C = 768 0.034 ms instead of 0.073 (one H200, session 36).
MIN_CALLS_PER_DISPATCH = 8


def n_copies(bytes_per_set: int, smoke: bool, most: int = 16) -> int:
  """How many rotating input copies keep every timed call reading from HBM, not L2 (and at
  least MIN_CALLS_PER_DISPATCH: each copy is one call of a timed dispatch)."""
  spill = -(-L2_SPILL_BYTES // max(1, bytes_per_set))
  return 1 if smoke else int(min(most, max(MIN_CALLS_PER_DISPATCH, spill)))


def chained(fn):
  """One jitted program calling fn(*args) for each input set in turn and returning every
  call's outputs (none is dead code). An optimization barrier hands each call's inputs over
  with the previous call's outputs, so XLA can neither merge the calls' kernels (horizontal
  fusion would make an XLA baseline look cheaper than one call is) nor reorder them. A jitted
  fn is called unwrapped (a nested jit may not carry compiler options of its own)."""
  fn = getattr(fn, '__wrapped__', fn)

  def run(arg_sets):
    outs, previous = [], None
    for args in arg_sets:
      previous, args = jax.lax.optimization_barrier((previous, tuple(args)))
      previous = fn(*args)
      outs.append(previous)
    return outs
  return jax.jit(run)


def time_fn(fn, arg_sets, *, warmup=3, trials=15, inner=10, smoke=False) -> float:
  """Median seconds per call of fn(*args): `trials` runs of `inner` back-to-back dispatches of
  `chained(fn)` over all of arg_sets (the rotating inputs), blocked on the last. Under
  `smoke` (CPU, interpreted kernels, timings meaningless) fn itself is dispatched per call:
  the chained program would compile the interpreted kernels a second time."""
  program = (lambda sets: [fn(*args) for args in sets]) if smoke else chained(fn)
  for _ in range(warmup):
    jax.block_until_ready(program(arg_sets))
  times = []
  for _ in range(trials):
    start = time.perf_counter()
    out = None
    for _ in range(inner):
      out = program(arg_sets)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / (inner * len(arg_sets)))
  return statistics.median(times)


def write_report(report, path) -> None:
  """Atomically (a temporary, then a rename): benches rewrite their report after every shape,
  and a call cut short mid-write must leave the last whole report, not half of one."""
  if path:
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
      json.dump(report, f, indent=2)
    os.replace(tmp, path)


def main(doc: str, run: Callable[[argparse.Namespace], dict[str, Any]],
         print_table: Callable[[dict[str, Any]], None], argv=None, *, inner: int = 10,
         add_options: Callable[[argparse.ArgumentParser], None] = lambda parser: None):
  """The command line every table-printing microbenchmark shares: --out, --smoke, --trials,
  --inner plus the bench's own options; runs, writes the JSON report, prints the table."""
  parser = argparse.ArgumentParser(description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', help='write the JSON report here')
  parser.add_argument('--smoke', action='store_true', help='tiny shapes, CPU interpret mode')
  parser.add_argument('--trials', type=int, default=15)
  parser.add_argument('--inner', type=int, default=inner)
  add_options(parser)
  args = parser.parse_args(argv)
  report = run(args)
  write_report(report, args.out)
  print_table(report)
  return report

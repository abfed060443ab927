"""Suite-wide settings: one compilation cache per run, one XLA compute thread per process, the
expensive files first, and a last line saying which marked tests were deselected.

On CPU the suite's time is mostly XLA compiling tiny models, not running them. A persistent
compilation cache shared by the xdist workers of one run makes a program that two tests, two
workers or two stage calls (a resumed run, a rerun, a recalibration) build the same way compile
once. It lives in a fresh temporary folder removed at the end, so every run starts cold, as a
fresh clone does. (XLA's optimisation level stays the default: at -O0 programs that the tests
require to agree bit for bit, e.g. the fake and integer quantized forwards, differ in the last
ulp, and the larger forwards run slower.)
"""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

CACHE_ENV = 'JAX_COMPILATION_CACHE_DIR'
MIN_SECS_ENV = 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'
MARKS = ('slow', 'gpu')
# XLA flags of the suite's processes, appended to XLA_FLAGS unless the flag is set already.
# One compute thread per process: the suite runs 2 xdist workers (and the processes tests start)
# on 2 cores, where XLA's per-process Eigen thread pools only oversubscribe them (~9% slower
# wall on 2 busy cores, measured). LLVM's expensive passes off: compiling is most of the
# suite's time, and without them a tiny VMamba's quantization compiled 16 % faster (24.7 ->
# 20.9 s) and five compile-heavy test files ran 10 % faster (144 -> 129 s, 2 workers), with the
# same bits (no pass may reassociate float math without fast-math, which XLA leaves off).
# (Only `--` flags: XLA stops reading XLA_FLAGS at a word without them, ignoring the rest.)
TEST_XLA_FLAGS = ('--xla_cpu_multi_thread_eigen=false',
                  '--xla_llvm_disable_expensive_passes=true')
_OWN_CACHE = pytest.StashKey[str]()        # the cache folder this process made
# The files that take longest (seconds in a `-n 2` run on 2 CPU cores that other work also
# loaded, 2026-12-03: relative sizes), most first: the default suite runs `-n 2 --dist loadfile`
# (pyproject), which hands whole files to whichever worker is free in collection order, so
# these start first and no long file is left to run alone at the end. The distributed test
# starts three processes of its own: first as well.
EXPENSIVE_FIRST = (
    'tests/test_distributed.py',                        # ~270
    'tests/quant/test_vmamba_quant.py',                 # ~350
    'tests/quant/test_api.py',                          # ~260
    'tests/kernels_pallas/test_selective_scan_triton.py',  # ~120
    'tests/models/test_scan.py',                        # ~120
    'tests/test_public_api.py',                         # ~115
    'tests/kernels_pallas/test_benches.py',             # ~95
    'tests/quant/test_int_linear.py',                   # ~95
    'tests/test_main.py',                               # ~85
    'tests/stages/test_quantize.py',                    # ~85
    'tests/test_checkpoints.py',                        # ~70
    'tests/models/test_vim.py',                         # ~70
    'tests/kernels_pallas/test_act_quant.py',           # ~70
    'tests/stages/test_pipeline.py',                    # ~65
    'tests/gen/test_objective.py',                      # ~60
)
_deselected: dict[str, int] = {}


def pytest_configure(config):
  """The controller (or the only process) makes the run's cache folder; xdist workers and the
  subprocesses that tests start inherit it through JAX's environment variables. A cache the
  person set (JAX_COMPILATION_CACHE_DIR) is used and kept."""
  if CACHE_ENV not in os.environ:
    os.environ[CACHE_ENV] = config.stash[_OWN_CACHE] = tempfile.mkdtemp(
        prefix='ouromamba-tests-xla-')
  os.environ.setdefault(MIN_SECS_ENV, '0.2')   # JAX's default, 1 s, skips most tiny programs
  flags = os.environ.get('XLA_FLAGS', '')
  for flag in TEST_XLA_FLAGS:
    if flag.split('=')[0] not in flags:
      flags = f'{flags} {flag}'.strip()
  os.environ['XLA_FLAGS'] = flags
  import jax  # pylint: disable=g-import-not-at-top  (it may have read the variables already)
  jax.config.update('jax_compilation_cache_dir', os.environ[CACHE_ENV])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', float(os.environ[MIN_SECS_ENV]))


def pytest_collection_modifyitems(items):
  """EXPENSIVE_FIRST's files first (in that order), the rest in collection order."""
  rank = {path: i for i, path in enumerate(EXPENSIVE_FIRST)}
  items.sort(key=lambda item: rank.get(item.nodeid.split('::')[0], len(rank)))


def pytest_deselected(items):
  for item in items:
    kind = next((m for m in MARKS if item.get_closest_marker(m)), 'other')
    _deselected[kind] = _deselected.get(kind, 0) + 1


def pytest_sessionfinish(session):
  if hasattr(session.config, 'workeroutput'):        # an xdist worker: tell the controller
    session.config.workeroutput['deselected'] = dict(_deselected)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):  # pylint: disable=unused-argument
  """xdist: every worker collects (and deselects) the whole suite; keep one worker's counts."""
  counts = getattr(node, 'workeroutput', {}).get('deselected', {})
  for kind, n in counts.items():
    _deselected[kind] = max(_deselected.get(kind, 0), n)


def pytest_unconfigure(config):
  """Runs after pytest's summary line, so this is the run's last line (xdist does not count
  deselected tests in its summary at all)."""
  own = config.stash.get(_OWN_CACHE, None)
  if own:
    shutil.rmtree(own, ignore_errors=True)
    os.environ.pop(CACHE_ENV, None)
  reporter = config.pluginmanager.get_plugin('terminalreporter')
  total = sum(_deselected.values())
  if reporter is None or not total or hasattr(config, 'workerinput'):
    return
  parts = ', '.join(f'{_deselected[k]} {k}' for k in (*MARKS, 'other') if _deselected.get(k))
  reporter.write_line(f'{total} deselected ({parts}); `-m slow` / `-m gpu` run the marked ones')

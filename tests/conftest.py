"""Suite-wide settings: fast XLA compilation, one compilation cache per run, and a last line
saying which marked tests were deselected.

On CPU the suite's time is mostly XLA compiling tiny models, not running them, so:
- XLA's CPU backend compiles without its expensive LLVM optimisations (the programs compute
  the same values; tiny models run fast either way). OUROMAMBA_TEST_OPTIMIZED_XLA=1 keeps the
  default optimisation level; with a CUDA plugin installed the flags are left alone (GPU tests
  measure the real kernels).
- A persistent compilation cache shared by the xdist workers of one run: a program that two
  tests, two workers or two stage calls (a resumed run, a rerun) build the same way compiles
  once. It lives in a fresh temporary folder removed at the end, so every run starts cold, as a
  fresh clone does.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile

import pytest

FAST_XLA_FLAGS = ('--xla_backend_optimization_level=0', '--xla_llvm_disable_expensive_passes=true')
CACHE_ENV = 'OUROMAMBA_TEST_XLA_CACHE'
MARKS = ('slow', 'gpu')
_OWN_CACHE = pytest.StashKey[str]()        # the cache folder this process made
_deselected: dict[str, int] = {}


def _has_cuda_plugin() -> bool:
  return any(importlib.util.find_spec(m) for m in ('jax_cuda12_plugin', 'jax_cuda13_plugin'))


def _fast_xla_flags() -> None:
  """Before any backend exists (this conftest loads before the tests are collected)."""
  if os.environ.get('OUROMAMBA_TEST_OPTIMIZED_XLA') == '1' or _has_cuda_plugin():
    return
  flags = os.environ.get('XLA_FLAGS', '').split()
  flags += [f for f in FAST_XLA_FLAGS if f.split('=')[0] not in {g.split('=')[0] for g in flags}]
  os.environ['XLA_FLAGS'] = ' '.join(flags)


_fast_xla_flags()


def pytest_configure(config):
  """The controller (or the only process) makes the run's cache folder; xdist workers, started
  later, inherit its path through the environment."""
  import jax  # pylint: disable=g-import-not-at-top
  if CACHE_ENV not in os.environ:
    os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix='ouromamba-tests-xla-')
    config.stash[_OWN_CACHE] = os.environ[CACHE_ENV]
  jax.config.update('jax_compilation_cache_dir', os.environ[CACHE_ENV])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.2)



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

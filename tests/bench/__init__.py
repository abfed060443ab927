"""Tests of the scripts under bench/, which are files, not a package: `load_bench` loads one."""
import importlib.util
import os
import sys

BENCH_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'bench')


def load_bench(name: str):
  """bench/<name>.py as a fresh module, registered in sys.modules (dataclasses look their module
  up there) with bench/ on sys.path (the scripts import each other by file name)."""
  if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)
  spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH_DIR, f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module

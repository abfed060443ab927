"""Gen's images shared between pipeline workdirs whose Gen is the same (the study mode's cells).

Most studies vary the quantizer (k, n_refresh, calibration-set size) or only the runs, not Gen:
their cells at one seed would each make the same synthetic set, which at paper size is most of
a cell's GPU time. `prepare` makes the cell's Gen once per key in a store folder and copies the
finished Gen folder into the cell's workdir, where the pipeline's Gen stage then only reloads it.

  <store>/<key>/gen/     one Gen run (gen_store layout), made under <store>/<key>.lock
  key = sha256 of (gen section, seed, model section) of the cell's effective config

Several processes (one per study) may ask for the same key at once: an exclusive `flock` on the
key's lock file makes one of them generate while the others wait, then reload it in seconds.
Gen's own run.json check still refuses a folder made with other settings, so a wrong key could
only fail loudly, never mix images.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil

from ouromamba_jax import progress
from ouromamba_jax.stages import digests
from ouromamba_jax.stages import gen_outputs
from ouromamba_jax.stages.runs import parse_runs


def needs_gen(cfg) -> bool:
  """Whether any of the config's runs calibrates on Gen's images."""
  return any(source == 'gen' for _, _, source in parse_runs(cfg.pipeline.runs))


def gen_key(cfg) -> str:
  """What Gen's images depend on, as a short digest (effective config: full size applied)."""
  what = {'gen': cfg.gen.to_dict(), 'seed': int(cfg.seed), 'model': cfg.model.to_dict()}
  return digests.settings_digest(what)


@contextlib.contextmanager
def _exclusive(path: str):
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _copy_gen(source_workdir: str, target_workdir: str) -> None:
  """The finished Gen folder into the target workdir (not its Orbax checkpoints: the finished
  groups are what a rerun reads), via a temporary name so a kill leaves no half copy."""
  target = gen_outputs.gen_dir(target_workdir)
  tmp = target + '.copying'
  shutil.rmtree(tmp, ignore_errors=True)
  shutil.copytree(gen_outputs.gen_dir(source_workdir), tmp,
                  ignore=shutil.ignore_patterns('checkpoints'))
  os.replace(tmp, target)


def prepare(cfg, workdir: str, store: str, generate, log: progress.Log) -> bool:
  """Gen's finished folder in `workdir` from the store (made there first if no cell made it
  yet); `generate(cfg, workdir)` is the generate stage. False (nothing done) when the config
  has no Gen run or the workdir already has a Gen folder of its own (it resumes that)."""
  if not needs_gen(cfg) or os.path.isdir(gen_outputs.gen_dir(workdir)):
    return False
  key = gen_key(cfg)
  shared = os.path.join(store, key)
  os.makedirs(store, exist_ok=True)
  with _exclusive(shared + '.lock'):
    made = os.path.isfile(gen_outputs.synthetic_path(shared))
    log(f'[study] Gen {key}: {"reusing" if made else "making"} the shared synthetic set')
    generate(cfg, shared)     # a finished store folder only reloads its groups
  os.makedirs(workdir, exist_ok=True)
  _copy_gen(shared, workdir)
  return True

"""ouromamba-jax command line: `python main.py --config=configs/vim_t_cifar10.py [--config.mode=...]`.

main.py only wires config to stage: it reads the config (a Python file returning a
ConfigDict), picks the mode and calls that stage's `run(config, workdir)`
(`ouromamba_jax.stages.MODES`).

The log shows this project's progress lines and every library's warnings; `--verbosity=0`
(absl's flag; 1 = debug) brings back the other libraries' INFO lines (Orbax, JAX).
"""
from __future__ import annotations

import importlib
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ouromamba_jax.stages import MODES
from ouromamba_jax.stages import console

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file (configs/*.py), e.g. configs/vim_t_cifar10.py.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Where checkpoints, images and reports go (default: config.workdir).')



def resolve_mode(mode: str):
  if mode not in MODES:
    raise app.UsageError(f'unknown mode {mode!r}; choose one of {sorted(MODES)} '
                         '(set it with --config.mode=NAME).')
  module_name, fn_name = MODES[mode].split(':')
  return getattr(importlib.import_module(module_name), fn_name)


def enable_compilation_cache(path: str) -> None:
  """Persistent XLA cache in `path` (created); '' leaves it off."""
  if not path:
    return
  import jax  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(os.path.expanduser(path))
  os.makedirs(path, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', path)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  console.quiet_libraries(flags.FLAGS['verbosity'].present, extra_files=[__file__])
  config = _CONFIG.value
  if config is None:
    raise app.UsageError('--config is required, e.g. --config=configs/vim_t_cifar10.py')
  workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value or config.workdir))
  os.makedirs(workdir, exist_ok=True)
  logging.info('mode=%s workdir=%s', config.mode, workdir)
  enable_compilation_cache(config.get('compilation_cache', ''))
  resolve_mode(config.mode)(config, workdir)


if __name__ == '__main__':
  app.run(main)

"""ouromamba-jax command line: `python main.py --config=configs/vim_t_cifar10.py [--config.mode=...]`.

main.py only wires config to stage: it reads the config (a Python file returning a
ConfigDict), checks it (`stages.preflight`), picks the mode and calls that stage's
`run(config, workdir)` (`ouromamba_jax.stages.MODES`). `--help` (or `--config.mode=help`)
lists the modes and the config fields. A config error, a missing checkpoint or missing data
ends the command with one line on stderr naming the field or the file, and a non-zero exit; so
does a SIGTERM during Gen, calibration or training (status 143), after the job has saved its
progress for a rerun.

The log shows this project's progress lines and every library's warnings; `--verbosity=0`
(absl's flag; 1 = debug) brings back the other libraries' INFO lines (Orbax, JAX).
"""
from __future__ import annotations

import importlib
import os
import re
import sys

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

HELP_ARGS = ('--help', '-help', '-h', '--helpshort', '-?')
CONFIG_ERROR_EXIT = 2
RUN_ERROR_EXIT = 1


def fail(message: str, code: int) -> None:
  """Ends the command with `message` as one line on stderr (no traceback)."""
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr)
  sys.exit(code)


def resolve_mode(mode: str):
  if mode not in MODES:
    raise app.UsageError(f'unknown mode {mode!r}; choose one of {sorted(MODES)} '
                         '(set it with --config.mode=NAME).')
  module_name, fn_name = MODES[mode].split(':')
  return getattr(importlib.import_module(module_name), fn_name)


def flag_error_line(argv: list[str], error: Exception) -> str:
  """A config flag's parse error as one line naming the field (and the close known name)."""
  text = str(error).replace('\\n', ' ').replace('\\', '')
  key = re.search(r"'(\w+)'", text)
  if isinstance(error, (AttributeError, KeyError)) and key:
    key = key.group(1)
    paths = [a[2:].split('=')[0] for a in argv if a.startswith('--config.')]
    path = next((p for p in paths if key in p.split('.')), f'config.{key}')
    parts = path.split('.')
    parent = '.'.join(parts[1:parts.index(key)])
    field = f'{parent}.{key}' if parent else key
    close = re.search(r'Did you mean "(\w+)"', text)
    hint = f'; did you mean {parent + "." if parent else ""}{close.group(1)}?' if close else ''
    return f'unknown config field {field}{hint} (python main.py --help lists the fields)'
  return text.replace('flag --config.', 'config field ')


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with one-line errors, and --help printing the modes and fields."""
  if any(a in HELP_ARGS for a in argv[1:]):
    print_help([a for a in argv if a not in HELP_ARGS])
    sys.exit(0)
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    fail(flag_error_line(argv, e), CONFIG_ERROR_EXIT)


def print_help(argv: list[str]) -> None:
  """The modes and config fields, with the values of --config when it parses."""
  from configs import common  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.stages import usage  # pylint: disable=g-import-not-at-top
  config = None
  try:
    flags.FLAGS(argv)
    config = _CONFIG.value
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError):
    pass
  chosen = [a.split('=', 1)[1] for a in argv if a.startswith('--config.mode=')]
  mode = chosen[-1] if chosen else ''
  print(usage.render(common.SECTIONS, config and config.to_dict(), mode,
                     extra={'model': {'overrides.*': common.OVERRIDES_HELP}}))


def keep_command_line_fields(config, overrides) -> None:
  """pipeline.full's paper-size values do not replace a field the user set on the command
  line (`--config.pipeline.full=True --config.quant.calib_images=32` calibrates on 32).
  overrides: config_flags.get_override_values, {dotted field name: value}."""
  from ouromamba_jax.stages import pipeline  # pylint: disable=g-import-not-at-top
  pipeline.keep_fields(config, overrides)


def enable_compilation_cache(path: str) -> None:
  """Persistent XLA cache in `path` (created); '' leaves it off."""
  if not path:
    return
  import jax  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(os.path.expanduser(path))
  os.makedirs(path, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', path)


def distributed_spec(config):
  from ouromamba_jax import distributed  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.stages import sections  # pylint: disable=g-import-not-at-top
  section = config.get('distributed')
  return (distributed.DistributedSpec() if section is None else
          sections.spec_from_section(distributed.DistributedSpec, section, 'distributed'))


def start_processes(config) -> None:
  """jax.distributed.initialize from config.distributed or the environment (one process when
  neither names a coordinator), before any JAX computation. Only the modes that read the
  `distributed` section split their work (and their writes) over processes; the others would
  all write the same files, so they are refused."""
  from ouromamba_jax import distributed  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.stages import MODE_SECTIONS  # pylint: disable=g-import-not-at-top
  spec = distributed_spec(config)
  several = [m for m, names in MODE_SECTIONS.items() if 'distributed' in names]
  if distributed.initialize_arguments(spec) is not None and config.mode not in several:
    raise ValueError(f'mode {config.mode} runs in one process; several processes (distributed.* '
                     f'or $JAX_COORDINATOR_ADDRESS) are for modes {", ".join(several)}.')
  distributed.initialize(spec)


def is_pipeline_worker(config) -> bool:
  return config.mode == 'pipeline' and config.pipeline.get('worker', -1) >= 0


def share_devices_with_workers(config) -> None:
  """A pipeline that will start worker processes on its GPUs keeps a small share of their
  memory (before JAX starts: its allocator takes its fraction at the first computation)."""
  from ouromamba_jax import distributed  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.stages import pipeline_workers  # pylint: disable=g-import-not-at-top
  if config.mode != 'pipeline' or distributed.initialize_arguments(
      distributed_spec(config)) is not None:   # several processes: no workers of their own
    return
  if pipeline_workers.workers_here(config.mode, config.pipeline.workers,
                                   config.pipeline.worker) > 1:
    os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION',
                          pipeline_workers.PARENT_MEMORY_FRACTION)


def remove_stale_temporaries(workdir: str) -> None:
  """What writers killed mid-write left in the workdir (temporaries never renamed into place)
  goes before this run writes anything; each removal is logged. Finished outputs are not
  touched."""
  from ouromamba_jax import distributed  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.io import atomic  # pylint: disable=g-import-not-at-top
  if distributed.is_writer():
    for path in atomic.remove_stale_temporaries(workdir):
      logging.warning('removed %s: left by a writer killed mid-write (never read)', path)


def main(argv):
  from ouromamba_jax.data import pipeline as data_pipeline  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.io import integrity  # pylint: disable=g-import-not-at-top
  from ouromamba_jax import stop_request  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.stages import preflight  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    fail(f'unexpected arguments: {argv[1:]} (config fields are set as --config.FIELD=VALUE)',
         CONFIG_ERROR_EXIT)
  console.quiet_libraries(flags.FLAGS['verbosity'].present, extra_files=[__file__])
  config = _CONFIG.value
  if config is None:
    fail('--config is required, e.g. --config=configs/vim_t_cifar10.py (--help lists the modes '
         'and fields)', CONFIG_ERROR_EXIT)
  if config.mode == 'help':
    print_help(sys.argv)
    return
  keep_command_line_fields(config, config_flags.get_override_values(flags.FLAGS['config']))
  try:
    preflight.check(config)
  except (ValueError, TypeError, KeyError, FileNotFoundError) as e:
    fail(e, CONFIG_ERROR_EXIT)
  workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value or config.workdir))
  os.makedirs(workdir, exist_ok=True)
  logging.info('mode=%s workdir=%s', config.mode, workdir)
  enable_compilation_cache(config.get('compilation_cache', ''))
  try:
    share_devices_with_workers(config)
    start_processes(config)
  except (ValueError, TypeError) as e:
    fail(e, CONFIG_ERROR_EXIT)
  if not is_pipeline_worker(config):   # the parent cleaned up; others' temporaries are live
    remove_stale_temporaries(workdir)
  try:
    resolve_mode(config.mode)(config, workdir)
  except (data_pipeline.DataNotFoundError, integrity.UnusableFileError,
          integrity.NonFiniteError) as e:
    fail(e, RUN_ERROR_EXIT)
  except stop_request.StopRequested as e:   # SIGTERM: progress saved, resumable
    fail(e, stop_request.EXIT_STATUS)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)

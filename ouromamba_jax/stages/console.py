"""What the command line prints: this project's INFO lines and every library's warnings.

Orbax, JAX and absl log at INFO through the same root handler as the stages (every Gen
checkpoint costs a handful of Orbax lines), which buries the progress lines a person watches.
By default the handler keeps INFO records only when they come from this project's code;
warnings and errors pass from everywhere. An explicit `--verbosity` (absl's flag, e.g.
`--verbosity=0` for INFO, `1` for DEBUG) means the person chose a level: then nothing is
filtered.
"""
from __future__ import annotations

import logging
import os
from typing import Iterable

from absl import logging as absl_logging

import kernels_pallas
import ouromamba_jax


def project_roots(extra_files: Iterable[str] = ()) -> tuple[str, ...]:
  """Directories (with a trailing separator) and files whose log records are the project's."""
  dirs = [os.path.dirname(os.path.abspath(m.__file__)) + os.sep
          for m in (ouromamba_jax, kernels_pallas)]
  return tuple(dirs) + tuple(os.path.abspath(f) for f in extra_files)


class ProjectInfoOnly(logging.Filter):
  """Passes warnings and above from anywhere, and lower levels only from `roots`."""

  def __init__(self, roots: tuple[str, ...]):
    super().__init__()
    self.roots = roots

  def filter(self, record: logging.LogRecord) -> bool:
    return (record.levelno >= logging.WARNING
            or os.path.abspath(record.pathname).startswith(self.roots))


def quiet_libraries(verbosity_given: bool, extra_files: Iterable[str] = ()) -> None:
  """Filters other libraries' INFO/DEBUG off the absl handler unless --verbosity was given
  (`extra_files`: scripts outside the packages whose lines count as the project's, main.py)."""
  if verbosity_given:
    return
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, ProjectInfoOnly) for f in handler.filters):
    handler.addFilter(ProjectInfoOnly(project_roots(extra_files)))

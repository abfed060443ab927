"""The command line's log filter: the project's INFO lines, every library's warnings."""
import logging
import os

from absl import logging as absl_logging

import ouromamba_jax
from ouromamba_jax.stages import console

PACKAGE = os.path.dirname(ouromamba_jax.__file__)


def _record(pathname: str, level: int) -> logging.LogRecord:
  return logging.LogRecord('absl', level, pathname, 1, 'msg', (), None)


def test_library_info_is_dropped_its_warnings_and_the_projects_info_pass():
  keep = console.ProjectInfoOnly(console.project_roots(['/somewhere/main.py']))
  orbax = '/venv/lib/python3.12/site-packages/orbax/checkpoint/checkpoint_manager.py'
  assert not keep.filter(_record(orbax, logging.INFO))
  assert keep.filter(_record(orbax, logging.WARNING))
  assert keep.filter(_record(os.path.join(PACKAGE, 'gen', 'generator.py'), logging.INFO))
  assert keep.filter(_record('/somewhere/main.py', logging.INFO))
  # A sibling directory whose name starts like the package's is not the package.
  assert not keep.filter(_record(PACKAGE + '_old/x.py', logging.INFO))


def test_explicit_verbosity_filters_nothing():
  handler = absl_logging.get_absl_handler()
  before = list(handler.filters)
  try:
    console.quiet_libraries(verbosity_given=True)
    assert handler.filters == before
    console.quiet_libraries(verbosity_given=False)
    console.quiet_libraries(verbosity_given=False)          # installed once
    added = [f for f in handler.filters if f not in before]
    assert len(added) == 1 and isinstance(added[0], console.ProjectInfoOnly)
  finally:
    for f in list(handler.filters):
      if f not in before:
        handler.removeFilter(f)

"""A polite stop for long jobs: SIGTERM asks a loop to save its progress and exit.

SIGTERM is what `timeout`, batch schedulers (preemption) and `docker stop` send before they
kill. Left to its default it ends the process mid-step: a Gen run loses the steps since its
last checkpoint, and a process that dies while its kernels run can take other processes'
kernels down with it on a shared GPU (under MPS a fault is reported to every client; RESULTS.md,
session 21). Inside `on_sigterm()` the signal only sets a flag; the loop checks `requested()`
between steps, saves, and raises `StopRequested`, which main.py turns into one line and exit
status 143 (128 + SIGTERM, what the default action would have given).
"""
from __future__ import annotations

import contextlib
import signal
import threading

import jax

EXIT_STATUS = 128 + signal.SIGTERM

_asked = threading.Event()


class StopRequested(Exception):
  """A SIGTERM asked the job to stop; the message says what was saved and how to resume."""


@contextlib.contextmanager
def on_sigterm(enabled: bool = True):
  """Within: SIGTERM sets the flag `requested()` reads instead of ending the process. A SIGTERM
  that the job did not answer with StopRequested (it finished first) is raised again on the way
  out, to the previous action. This does nothing (SIGTERM keeps its previous action) when not
  `enabled`, off the main thread (only it can set signal handlers), or with several JAX
  processes (they would see the signal at different steps and then wait for each other in the
  step's collectives)."""
  if (not enabled or threading.current_thread() is not threading.main_thread()
      or jax.process_count() > 1):
    yield
    return
  _asked.clear()
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: _asked.set())
  answered = False
  try:
    yield
  except StopRequested:
    answered = True
    raise
  finally:
    # None: a handler not set from Python (the interpreter cannot put it back): the default.
    signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    unanswered = _asked.is_set() and not answered
    _asked.clear()
    if unanswered:   # the job ended before it could stop: the signal is not lost, it goes on
      signal.raise_signal(signal.SIGTERM)


def requested() -> bool:
  """Whether a SIGTERM arrived inside `on_sigterm()`."""
  return _asked.is_set()

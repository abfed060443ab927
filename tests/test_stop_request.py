"""SIGTERM as a request to stop (`ouromamba_jax.stop_request`), not a kill."""
import os
import signal
import threading

from ouromamba_jax import stop_request


def test_sigterm_inside_sets_the_flag_and_the_previous_action_comes_back():
  before = signal.getsignal(signal.SIGTERM)
  with stop_request.on_sigterm():
    assert not stop_request.requested()
    os.kill(os.getpid(), signal.SIGTERM)   # the process survives: only the flag is set
    assert stop_request.requested()
  assert signal.getsignal(signal.SIGTERM) is before
  assert not stop_request.requested()
  assert stop_request.EXIT_STATUS == 143


def test_disabled_or_off_the_main_thread_leaves_sigterm_alone():
  before = signal.getsignal(signal.SIGTERM)
  with stop_request.on_sigterm(enabled=False):
    assert signal.getsignal(signal.SIGTERM) is before
  seen = []

  def worker():
    with stop_request.on_sigterm():
      seen.append(signal.getsignal(signal.SIGTERM))

  thread = threading.Thread(target=worker)
  thread.start()
  thread.join()
  assert seen == [before]

"""SIGTERM as a request to stop (`ouromamba_jax.stop_request`), not a kill."""
import os
import signal
import threading

import pytest

from ouromamba_jax import stop_request


@pytest.fixture
def previous_action():
  """A recording SIGTERM handler in place of the process's own, for the test's duration."""
  received = []
  before = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
  yield received
  signal.signal(signal.SIGTERM, before)


def test_sigterm_inside_sets_the_flag_and_the_previous_action_comes_back(previous_action):
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(stop_request.StopRequested):
    with stop_request.on_sigterm():
      assert not stop_request.requested()
      os.kill(os.getpid(), signal.SIGTERM)   # the process survives: only the flag is set
      assert stop_request.requested()
      raise stop_request.StopRequested('saved; stopping')
  assert signal.getsignal(signal.SIGTERM) is before
  assert not stop_request.requested()
  assert previous_action == []            # answered: not passed on
  assert stop_request.EXIT_STATUS == 143


def test_a_sigterm_the_job_did_not_answer_goes_on_to_the_previous_action(previous_action):
  with stop_request.on_sigterm():
    os.kill(os.getpid(), signal.SIGTERM)   # the job finishes anyway (e.g. on its last step)
  assert previous_action == [signal.SIGTERM]
  assert not stop_request.requested()


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

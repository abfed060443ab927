"""progress: the default line sink, durations as text, and a rate that leaves compilation out."""
import logging

from ouromamba_jax import progress


def test_log_info_prints_the_line_as_is(caplog):
  caplog.set_level(logging.INFO)
  progress.log_info('100% done')
  assert caplog.records[-1].getMessage() == '100% done'


def test_format_seconds():
  assert progress.format_seconds(0) == '0m00s'
  assert progress.format_seconds(-3) == '0m00s'
  assert progress.format_seconds(59.6) == '1m00s'
  assert progress.format_seconds(3723) == '1h02m03s'


def test_throughput_times_from_the_end_of_the_first_unit():
  now = [0.0]
  rate = progress.Throughput(total=10, done=2, clock=lambda: now[0])  # 2 units restored
  assert not rate.started and rate.rate() == 0.0 and rate.seconds_left() is None
  now[0] = 100.0
  rate.advance(1)                                  # compiled for 100 s: not timed
  assert rate.started and rate.seconds_left() is None
  rate.restore(1)                                  # restored work is done, not timed
  now[0] = 110.0
  rate.advance(2)                                  # 2 units in 10 s
  assert rate.rate() == 0.2 and rate.seconds_left() == (10 - 6) / 0.2

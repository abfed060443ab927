"""bench/profile_e2e.py: reading a profiler trace into per-kernel time and launch counts."""
import gzip
import json

from tests.bench import load_bench


def _trace(path, events):
  meta = [{'ph': 'M', 'name': 'process_name', 'pid': 1, 'args': {'name': '/host:CPU'}},
          {'ph': 'M', 'name': 'process_name', 'pid': 2, 'args': {'name': '/device:GPU:0'}}]
  with gzip.open(path, 'wt') as f:
    json.dump({'traceEvents': meta + events}, f)
  return str(path)


def _kernel(name, dur, pid=2):
  return {'ph': 'X', 'name': name, 'dur': dur, 'pid': pid, 'ts': 0}


def test_device_kernels_are_summed_with_their_launches_and_grouped_by_family(tmp_path):
  profile = load_bench('profile_e2e')
  path = _trace(tmp_path / 'a.trace.json.gz', [
      _kernel('act_quant_sample', 30.0), _kernel('act_quant_sample', 40.0),
      _kernel('act_quant_sample__1', 90.0), _kernel('loop_add_fusion.4', 5.0),
      _kernel('host_only_work', 1000.0, pid=1), {'ph': 'i', 'name': 'instant', 'pid': 2}])
  events = profile.device_events(path)
  assert events == {'act_quant_sample': (70.0, 2), 'act_quant_sample__1': (90.0, 1),
                    'loop_add_fusion.4': (5.0, 1)}  # host events and non-spans left out
  assert profile.by_family(events) == {'act_quant_sample': (160.0, 3),
                                       'loop_add_fusion': (5.0, 1)}


def test_a_trace_without_a_gpu_counts_every_process(tmp_path):
  """On a CPU the host threads' events stand in (a check that the script runs)."""
  profile = load_bench('profile_e2e')
  path = tmp_path / 'cpu.trace.json.gz'
  with gzip.open(path, 'wt') as f:
    json.dump([_kernel('ThunkExecutor::Execute', 12.5, pid=7)], f)
  assert profile.device_events(str(path)) == {'ThunkExecutor::Execute': (12.5, 1)}

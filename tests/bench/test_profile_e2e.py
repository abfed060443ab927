"""bench/profile_e2e.py: reading a profiler trace into per-kernel time and launch counts."""
import gzip
import json

from ouromamba_jax.models import vim
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


def test_hlo_dump_writes_the_module_and_every_kernel_instance(tmp_path):
  """`--hlo_dir`: the optimized module (gzip) and each kernel's own time, largest first, so a
  glue kernel without a source line (a copy) can be found in the module offline."""
  profile = load_bench('profile_e2e')
  profile._write_hlo(str(tmp_path / 'hlo'), 'vim_b_b1_w4a4o8', 'HloModule m\nENTRY e {}\n',
                     {'copy.3': (2.0, 1.0), 'memcpy32_post': (9.5, 4.0)})
  text = gzip.decompress((tmp_path / 'hlo' / 'vim_b_b1_w4a4o8.hlo.txt.gz').read_bytes()).decode()
  assert text.startswith('HloModule m')
  kernels = json.loads((tmp_path / 'hlo' / 'vim_b_b1_w4a4o8.kernels.json').read_text())
  assert list(kernels.items()) == [('memcpy32_post', [9.5, 4.0]), ('copy.3', [2.0, 1.0])]


def test_each_variant_is_profiled_on_the_tree_its_batch_runs(monkeypatch):
  """The profile times the layout e2e_latency times (`--stack_directions`, by default the
  library's layout for the batch), not the tree as stored."""
  profile = load_bench('profile_e2e')
  profiled = {}

  def record(model, tree, images, iters, with_sources=False, options=None):
    profiled['stacked'] = vim.holds_stacked_directions(tree)
    return {'kernel': (1.0, 1.0)}, {}, ''

  monkeypatch.setattr(profile, 'profile_variant', record)
  for stacking, expected in ((1, True), (0, False)):
    profile.main(['--model=vim_t', '--depth=1', '--batch=1', '--variants=bf16_xla',
                  f'--stack_directions={stacking}'])
    assert profiled.pop('stacked') is expected

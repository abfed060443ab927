"""bench/ss2d_scan.py: the released variants' stage shapes, and a CPU smoke run of both paths."""
from tests.bench import load_bench


def test_stage_shapes_follow_the_released_configs():
  bench = load_bench('ss2d_scan')
  shapes = bench.stage_shapes('vmamba_b', 64)
  assert [(s['length'], s['d_inner'], s['depth']) for s in shapes] == [
      (3136, 256, 2), (784, 512, 2), (196, 1024, 15), (49, 2048, 2)]
  assert {s['d_state'] for s in shapes} == {1}
  assert [s['d_inner'] for s in bench.stage_shapes('vmamba_t', 64)] == [96, 192, 384, 768]


def test_smoke_times_both_paths_and_they_agree(tmp_path):
  bench = load_bench('ss2d_scan')
  out = tmp_path / 'ss2d.json'
  report = bench.main(['--smoke', '--trials=1', '--inner=1', f'--out={out}'])
  (row,) = report['rows']
  assert row['triton_ms'] > 0 and row['associative_ms'] > 0 and row['rel_diff'] < 1e-5
  assert report['per_forward']['tiny']['triton_ms_per_forward'] == row['triton_ms']
  assert out.is_file()

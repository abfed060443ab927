"""bench/outlier_structure.py: its set statistics on a hand-made mask, and a smoke run."""
import numpy as np

from tests.bench import load_bench


def test_window_sets_and_tile_unions_of_a_known_mask():
  structure = load_bench('outlier_structure')
  mask = np.zeros((2, 5, 4), bool)        # 2 samples, 5 tokens, K = 4; windows of 2 tokens
  mask[0, 0, 1] = mask[0, 1, 1] = True    # sample 0, window 0: channel 1 (cumulative)
  mask[0, 4, 3] = True                    # sample 0, window 2 (a one-token window): channel 3
  mask[1, 2:4, 0] = True                  # sample 1, window 1: channel 0
  stats = structure.set_stats(mask, n_refresh=2, tiles=(4, 10))
  assert stats['entry_rate'] == 5 / 40
  # window ends: tokens 1, 3, 4 -> sets {1}, {}, {3} and {}, {0}, {} -> 3 of 6 windows hold 1/4
  assert stats['window_set'] == 3 / 24
  # 10 rows in tiles of 4 (last padded): rows 0-3 {1}, rows 4-7 {3, 0}, rows 8-9 {0}
  assert stats['tile_union'] == (1 + 2 + 1) / 12 and stats['tile_union_max'] == 0.5
  assert stats['tile_union@4'] == stats['tile_union'] and stats['tile_union@10'] == 3 / 4
  assert stats['kblock_busy@32'] == 1.0   # K = 4 is one block: every tile has an outlier in it


def test_smoke_run_reports_every_linear(tmp_path):
  structure = load_bench('outlier_structure')
  report = structure.main(['--smoke', '--calib_images=4', '--images=4',
                           f'--out={tmp_path / "s.json"}'])
  summary = report['models']['random_init']
  assert {'in_proj', 'out_proj', 'x_proj', 'dt_proj'} <= set(summary['by_linear'])
  for stats in summary['sites'].values():
    assert all(0 <= stats[s] <= 1 for s in structure.STATS)
    assert stats['window_set'] <= stats['window_set_p99'] + 1e-9
    assert stats['tile_union'] <= stats['tile_union_max'] + 1e-9
  assert (tmp_path / 's.json').exists()

"""The kernel microbenchmarks run end to end (tiny shapes, Pallas interpret mode) and report
numbers that match their references, so they cannot rot between GPU sessions."""
from __future__ import annotations

import json

import pytest

from kernels_pallas.act_quant import bench as act_quant_bench
from kernels_pallas.mixed_gemm import bench as mixed_gemm_bench
from kernels_pallas.patched_readout import bench as patched_readout_bench
from kernels_pallas.selective_scan import bench as selective_scan_bench


def _smoke(bench, tmp_path, *flags):
  out = tmp_path / 'report.json'
  bench.main(['--smoke', '--out', str(out), *flags])
  report = json.loads(out.read_text())
  assert report['smoke'] is True
  return report


def test_act_quant_bench(tmp_path):
  report = _smoke(act_quant_bench, tmp_path)
  for entry in report['results']:
    assert all(v['ms'] > 0 for v in entry['variants'].values()), entry
    assert max(entry['mismatch'].values()) == 0.0, entry
  table = act_quant_bench.variants(True, warps=(4, 8))  # --warps: one variant per count
  assert {'triton_sample_w4', 'triton_sample_w8'} <= set(table)


def test_mixed_gemm_bench(tmp_path):
  report = _smoke(mixed_gemm_bench, tmp_path, '--shapes=smoke.b')
  assert [e['shape'] for e in report['results']] == ['smoke.b']  # --shapes picks, in one run
  for entry in report['results']:
    assert entry['exact'], entry
    assert all(v['ms'] > 0 for v in entry['variants'].values()), entry


def test_mixed_gemm_bench_names_the_shapes_when_none_match(tmp_path):
  with pytest.raises(SystemExit, match=r"--shapes='vim_q' matches none of \['smoke.a'"):
    mixed_gemm_bench.main(['--smoke', '--shapes=vim_q'])


def test_selective_scan_bench(tmp_path):
  report = _smoke(selective_scan_bench, tmp_path)
  assert report['max_rel_err'] < 1e-2
  assert all(r['ms'] > 0 for size in report['sizes'] for r in size['results'])


def test_patched_readout_bench(tmp_path):
  report = _smoke(patched_readout_bench, tmp_path)
  for entry in report['results']:
    assert entry['rel_err'] < 1e-5, entry
    assert all(v['ms'] > 0 for v in entry['variants'].values()), entry

"""bench/triton_compile_time.py on the CPU: a form's Triton IR is captured from its lowering
for an abstract H100, and its compile is timed where the `triton` package exists (it is not a
dependency: without it the compile reports the child process's error)."""
import importlib.util
import json

import pytest
from tests.bench import load_bench


def test_lower_only_writes_the_triton_ir(tmp_path):
  bench = load_bench('triton_compile_time')
  out = tmp_path / 'compile.json'
  report = bench.main(['--forms=act_quant_c48_loop', '--lower_only', f'--out={out}',
                       f'--ir_dir={tmp_path}'])
  (cell,) = json.load(open(out))['results']
  assert cell == report['results'][0] and 'seconds' not in cell
  text = open(cell['ir']).read()
  assert text.startswith('module') and 'tt.func public @act_quant_sample' in text
  assert cell['ir_chars'] == len(text) and cell['num_warps'] == 2


def test_unknown_forms_are_refused_with_the_choices():
  bench = load_bench('triton_compile_time')
  with pytest.raises(SystemExit):
    bench.parse_args(['--forms=act_quant_c99_loop'])


def test_a_failed_or_slow_compile_is_reported_not_raised(tmp_path):
  bench = load_bench('triton_compile_time')
  bad = tmp_path / 'bad.ttir'
  bad.write_text('not a module')
  cell = bench.compile_seconds(str(bad), 1, 1, timeout=60)
  assert 'error' in cell and cell['seconds'] > 0
  slow = bench.compile_seconds(str(bad), 1, 1, timeout=1e-3)
  assert slow['error'].startswith('over the') and slow['seconds'] == 1e-3


@pytest.mark.skipif(importlib.util.find_spec('triton') is None, reason='needs the triton package')
def test_compiles_a_loop_kernel_with_triton(tmp_path):
  bench = load_bench('triton_compile_time')
  report = bench.main(['--forms=act_quant_c48_loop', f'--ir_dir={tmp_path}', '--sass'])
  (cell,) = report['results']
  assert 'error' not in cell and cell['ptx_chars'] > 0
  assert cell['sass']['registers'] > 0 and cell['sass']['loop']['instructions'] > 0


def test_sass_summary_reads_the_innermost_loop():
  """cuobjdump's text: registers and spills from -res-usage; the loop is the range of the last
  backward branch (predicated instructions counted by their opcode)."""
  bench = load_bench('triton_compile_time')
  line = lambda addr, text: f'        /*{addr:04x}*/                   {text} ;   /* 0x0 */'
  sass = '\n'.join([
      line(0x00, 'LDC R1, c[0x0][0x28]'), line(0x10, 'S2R R49, SR_TID.X'),
      line(0x20, 'LDG.E.64 R4, desc[UR4][R2.64]'),                 # loop body from here
      line(0x30, 'SHFL.BFLY PT, R6, R7, 0x10, 0x1f'), line(0x40, 'BAR.SYNC.DEFER_BLOCKING 0x0'),
      line(0x50, '@!P5 STG.E.U8 desc[UR4][R8.64], R9'), line(0x60, '@P5 BRA 0x20'),
      line(0x70, '@!P0 BRA 0x90'), line(0x80, 'EXIT'), line(0x90, 'BRA 0x90')])
  summary = bench.sass_summary(sass, 'Function act_quant_sample:\n  REG:80 STACK:0 SHARED:1024 '
                                     'LOCAL:0 CONSTANT[0]:584')
  assert summary['registers'] == 80 and summary['local_bytes'] == 0
  assert summary['instructions'] == 10
  # the trailing `BRA 0x90` is a self-loop (target == address), not a backward branch
  # R4/R5 (the load's registers) are not read before the back edge: carried
  assert summary['loop'] == {'instructions': 5, 'barriers': 1, 'shuffles': 1,
                             'global_loads': 1, 'global_stores': 1, 'calls': 0,
                             'load_first_reads': [None]}


def test_load_first_reads_counts_instructions_to_the_first_source_use():
  """A register written (operand 0 of a non-store) is no read; a store reads all its
  registers; a 64-bit load covers two registers; `UR4` is not `R4`."""
  bench = load_bench('triton_compile_time')
  body = [('LDG.E.64', ' R4, desc[UR4][R2.64]'), ('IMAD.MOV.U32', ' R5, RZ, RZ, 0x1'),
          ('UIADD3', ' UR4, UR4, 0x1, URZ'), ('FADD', ' R8, R5, R9'),
          ('LDG.E', ' R10, desc[UR4][R2.64]'), ('STG.E', ' desc[UR4][R6.64], R10')]
  assert bench.load_first_reads(body) == [3, 1]


def test_programs_per_sm_counts_registers_in_steps_of_eight_and_warp_slots():
  bench = load_bench('triton_compile_time')
  assert bench.programs_per_sm(64, 4) == 8      # 8,192 registers a program
  assert bench.programs_per_sm(60, 4) == 8      # rounded up to 64
  assert bench.programs_per_sm(48, 4) == 10
  assert bench.programs_per_sm(32, 1) == 64     # warp slots bound
  assert bench.programs_per_sm(255, 8) == 1
  assert bench.programs_per_sm(64, 4, shared_bytes=96 * 1024) == 2  # three 32 KiB stages

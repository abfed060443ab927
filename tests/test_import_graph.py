"""The import graph of the project, read from the source with `ast` (nothing is imported).

Rules: the kernels are the ground floor (`kernels_pallas` imports nothing from `ouromamba_jax`);
no import cycles among project modules (imports inside functions count too: a cycle hidden in
a function is still a cycle); library modules never import a stage (the runnable steps that
compose the library: pipeline, Gen's and quantization's runs, convert, `ouromamba_jax.stages`).
"""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ('kernels_pallas', 'ouromamba_jax')
# Stage modules: the CLI modes, workdirs, resume and reports (everything under this package).
STAGES = ('ouromamba_jax.stages',)


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob('*.py'))}


def _resolve(name: str, known) -> str | None:
  """The project module `name` refers to: itself, or its longest known prefix (an attribute
  import such as `from pkg.mod import func`); None outside the project."""
  while name:
    if name in known:
      return name
    name = name.rpartition('.')[0]
  return None


def _imports(module: str, path: pathlib.Path, known) -> set[str]:
  """Project modules `module` imports anywhere in its body (module and function level)."""
  is_package = path.name == '__init__.py'
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = module.split('.')
        base = base[:len(base) - node.level + (1 if is_package else 0)]
        prefix = '.'.join(base + ([node.module] if node.module else []))
      else:
        prefix = node.module
      names = [f'{prefix}.{alias.name}' for alias in node.names]
    else:
      continue
    for name in names:
      target = _resolve(name, known)
      if target is not None and target != module:
        found.add(target)
  return found


MODULES = _modules()
GRAPH = {m: _imports(m, p, MODULES) for m, p in MODULES.items()}


def _is_stage(module: str) -> bool:
  return any(module == s or module.startswith(s + '.') for s in STAGES)


def _cycles(graph) -> list[list[str]]:
  """One cycle per strongly connected component with more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_graph_is_read():
  assert 'kernels_pallas.act_quant.api' in GRAPH['ouromamba_jax.quant.int_linear']


def test_kernels_import_nothing_from_the_library():
  bad = {m: sorted(t for t in targets if t.split('.')[0] == 'ouromamba_jax')
         for m, targets in GRAPH.items() if m.startswith('kernels_pallas')}
  assert not {m: t for m, t in bad.items() if t}


def test_no_import_cycles():
  assert not _cycles(GRAPH)


def test_library_modules_do_not_import_stages():
  bad = {m: sorted(t for t in targets if _is_stage(t))
         for m, targets in GRAPH.items() if not _is_stage(m)}
  assert not {m: t for m, t in bad.items() if t}

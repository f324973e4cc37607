"""The package's layering: no module imports a higher layer, and no modules import each other in a cycle
(function-level imports included).

models < weights I/O < sharding < data < train and eval < scaling < entry points (the only modules that define
flags, which do so inside their `run()` or as `__main__` modules).
"""
import ast
import pathlib

import pytest

from conftest import REPO

PACKAGE = REPO / 'var_jax'
# The command modules live in var_jax/cli/; var_jax/X.py are the two-line shims behind `python -m var_jax.X`.
ENTRY_POINTS = ('cli', 'demo', 'convert', 'sample', 'tokenize', 'parity', 'sweep', 'fit', 'bench', 'edit', 'evaluate',
                'orderings')
LAYERS = {'errors': 0, 'compilation_cache': 0, 'paths': 1, 'models': 1, 'flops': 1, 'weights': 2, 'sharding': 3, 'data': 4, 'train': 5, 'generate': 5, 'eval': 5,
          'scaling': 6, **{name: 7 for name in ENTRY_POINTS}}


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _layer(module: str) -> int:
  parts = module.split('.')
  if parts[-1] == '__main__':
    return 7
  if len(parts) == 1:
    return 7  # the package itself holds only its version
  if parts[1] not in LAYERS:
    pytest.fail(f'{module}: no layer assigned in tests/test_layers.py (add it to LAYERS)')
  return LAYERS[parts[1]]


def _imports(path: pathlib.Path):
  """var_jax modules `path` imports (absolute imports; `from var_jax.x import y` may name module y)."""
  tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names if a.name.startswith('var_jax'))
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('var_jax'):
      for alias in node.names:
        candidate = f'{node.module}.{alias.name}'
        is_module = (REPO / (candidate.replace('.', '/') + '.py')).exists() or (
            REPO / candidate.replace('.', '/')).is_dir()
        yield candidate if is_module else node.module


MODULES = sorted(PACKAGE.rglob('*.py'))


def test_no_module_imports_a_higher_layer():
  bad = [f'{_module_name(p)} imports {m}' for p in MODULES for m in _imports(p)
         if _layer(m) > _layer(_module_name(p))]
  assert not bad, bad


def _cycle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
  """A path start -> ... -> start in `graph`, or None."""
  stack, seen = [(start, [start])], set()
  while stack:
    node, path = stack.pop()
    for nxt in sorted(graph.get(node, ())):
      if nxt == start:
        return path + [start]
      if nxt not in seen:
        seen.add(nxt)
        stack.append((nxt, path + [nxt]))
  return None


def test_no_import_cycles():
  """Within a layer too: a module never imports (through any chain) one that imports it back."""
  graph = {_module_name(p): {m for m in _imports(p) if m != _module_name(p)} for p in MODULES}
  cycles = {' -> '.join(c) for m in graph if (c := _cycle_from(m, graph))}
  assert not cycles, sorted(cycles)


def test_flags_are_defined_only_by_entry_points_inside_run():
  """A module-level DEFINE_* is allowed only in a `__main__` module; elsewhere flags live inside functions."""
  bad = []
  for path in MODULES:
    tree = ast.parse(path.read_text())
    module_level = [n for n in tree.body if isinstance(n, (ast.Assign, ast.Expr)) and 'DEFINE_' in ast.unparse(n)]
    if module_level and path.name != '__main__.py':
      bad.append(f'{_module_name(path)}: {ast.unparse(module_level[0])}')
    if 'allow_override' in path.read_text():
      bad.append(f'{_module_name(path)}: allow_override')
  assert not bad, bad

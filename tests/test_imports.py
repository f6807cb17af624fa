"""The package's import structure, read from its source: no import circle, no module importing a
higher layer, no unexplained import of the package inside a function, and every module importable
before any other of the package, in a fresh process.

The graph counts every import of a `mim_jax` module wherever it stands (module level, inside a
function or a class) and the modules a registry names for `importlib.import_module` (the
objectives' METHODS): a circle closed only by a function-local or a dynamic import is a circle.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from typing import Iterator, Optional

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "mim_jax"

# Layers, lowest first. A module may import modules of its own layer (the circle check covers
# those) and of lower ones, never of a higher one. A module's layer is the one of the longest
# prefix listed for it.
#  - base: what needs nothing else of the package: config values, the console, chip facts,
#    metric writers, plots, meshes, orbax checkpoints and the run's config.json, the config-file
#    reader of the command lines, the analysis measures (pure jnp functions), the kinds of value
#    a config key may hold (allowed), the XLA flags set on import;
#  - data, then masking (pure jnp), then models (ViT, ConvViT: masking for the hybrid's masks),
#    then checkpoint conversion (name tables, tensor layouts, the student's scan layout: reads
#    the ViT's names and layers), then teachers (their network is built from models' layers,
#    their converters use the conversion's tables);
#  - optim (layer decay reads the ViT's block names), then evaluation (the linear probe trains
#    with optim; kNN and features run a ViT), then objectives (models + heads + losses, and the
#    evaluation each one's runs choose);
#  - the defaults of every config key with what each may hold (gathers the objectives' and the
#    data's), then the reader of an old run's config.json (fills keys added since from them);
#  - step and validate (generic over objectives: they receive one, or check its settings);
#  - init_from and export (a run's weights in and out: checkpoints, models, teachers' readers);
#  - assembly (a run built from its config), then the loop (train), then the demo (runs the
#    loop, exports its teacher), then the commands above them all (main, the AOT compiler, the
#    analysis CLI, the tools), which resolve the demo's teacher spec before assembling a run.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("mim_jax", "mim_jax.console", "mim_jax.config", "mim_jax.chips", "mim_jax.metrics",
     "mim_jax.plots", "mim_jax.sharding", "mim_jax.checkpoint", "mim_jax.tools.config_file",
     "mim_jax.analysis", "mim_jax.allowed", "mim_jax.xla_flags"),
    ("mim_jax.data",),
    ("mim_jax.masking",),
    ("mim_jax.models",),
    ("mim_jax.convert",),
    ("mim_jax.teachers",),
    ("mim_jax.optim",),
    ("mim_jax.evaluation",),
    ("mim_jax.objectives",),
    ("mim_jax.defaults",),
    ("mim_jax.saved_config",),
    ("mim_jax.step", "mim_jax.validate", "mim_jax.model_flops", "mim_jax.recommend"),
    ("mim_jax.hlo_cost",),
    ("mim_jax.init_from", "mim_jax.export"),
    ("mim_jax.assembly",),
    ("mim_jax.train",),
    ("mim_jax.demo",),
    ("mim_jax.main", "mim_jax.aot", "mim_jax.analysis.cli", "mim_jax.analysis.__main__",
     "mim_jax.tools"),
)

# Function-local imports of the package, (importer, imported): each needs its reason.
LOCAL_IMPORTS = {
    ("mim_jax.main", "mim_jax.tools.config_file"):
        "the command line is checked in the supervising process, which imports no JAX",
    ("mim_jax.main", "mim_jax.train"): "imported after jax.distributed.initialize",
    ("mim_jax.main", "mim_jax.demo"): "imported after jax.distributed.initialize",
    ("mim_jax.main", "mim_jax.validate"): "imported after jax.distributed.initialize",
    ("mim_jax.export", "mim_jax.data.input_pipeline"):
        "TensorFlow (seconds to import) only to name a classifier's labels",
    ("mim_jax.tools.dataset_stats", "mim_jax.data.input_pipeline"):
        "TensorFlow only when a dataset is read, not for the statistics' arithmetic",
}


def module_files(root: str = ROOT) -> dict[str, str]:
  """{dotted module name: path} of every module of the package (a package is its __init__)."""
  out = {}
  for folder, dirs, files in os.walk(os.path.join(root, PACKAGE)):
    dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
    for name in sorted(files):
      if name.endswith(".py"):
        parts = os.path.relpath(os.path.join(folder, name), root)[:-3].split(os.sep)
        if parts[-1] == "__init__":
          parts = parts[:-1]
        out[".".join(parts)] = os.path.join(folder, name)
  return out


def _target(name: str, modules: dict[str, str]) -> Optional[str]:
  """The package module `name` loads: itself, else its longest prefix that is a module."""
  while name and name not in modules:
    name = name.rpartition(".")[0]
  return name or None


def _nodes(tree: ast.AST, inside: bool = False) -> Iterator[tuple[ast.AST, bool]]:
  """Every node of `tree` with whether it stands inside a function or class body."""
  for child in ast.iter_child_nodes(tree):
    yield child, inside
    body = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
    yield from _nodes(child, inside or body)


def imports(module: str, path: str, modules: dict[str, str]) -> set[tuple[str, str]]:
  """{(imported package module, how)}: how is "top", "local" (in a function or class) or
  "dynamic" (a module name in a file that calls importlib.import_module)."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
  out, names = set(), set()
  for node, inside in _nodes(tree):
    how = "local" if inside else "top"
    if isinstance(node, ast.Import):
      names |= {(alias.name, how) for alias in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      names |= {(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base, how)
                for alias in node.names}
    elif isinstance(node, ast.Constant) and isinstance(node.value, str):
      names.add((node.value, "string"))
  dynamic = "import_module" in {n.attr for n, _ in _nodes(tree) if isinstance(n, ast.Attribute)}
  for name, how in names:
    if how == "string":
      if not (dynamic and name in modules):
        continue
      how = "dynamic"
    target = _target(name, modules) if name.split(".")[0] == PACKAGE else None
    if target and target != module:
      out.add((target, how))
  return out


def import_graph(root: str = ROOT) -> dict[str, set[tuple[str, str]]]:
  modules = module_files(root)
  return {m: imports(m, path, modules) for m, path in modules.items()}


def layer_of(module: str) -> int:
  best, layer = -1, None
  for i, prefixes in enumerate(LAYERS):
    for prefix in prefixes:
      if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
        best, layer = len(prefix), i
  assert layer is not None, f"{module} is in no layer of LAYERS: place it there"
  return layer


def find_cycle(graph: dict[str, set[str]]) -> Optional[list[str]]:
  """One circle of `graph` as [a, b, ..., a], or None."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  path: list[str] = []

  def visit(node: str) -> Optional[list[str]]:
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state and (found := visit(nxt)):
        return found
    state[node] = 2
    path.pop()
    return None

  for node in sorted(graph):
    if node not in state and (found := visit(node)):
      return found
  return None


def problems(root: str = ROOT) -> list[str]:
  """Every breach of the rules above in the tree at `root`, one line each."""
  graph = import_graph(root)
  out = []
  cycle = find_cycle({m: {t for t, _ in edges} for m, edges in graph.items()})
  if cycle:
    out.append("import circle: " + " -> ".join(cycle))
  for module, edges in sorted(graph.items()):
    for target, how in sorted(edges):
      if layer_of(target) > layer_of(module):
        out.append(f"{module} imports {target} ({how}), a higher layer "
                   f"({layer_of(module)} < {layer_of(target)})")
      if how == "local" and (module, target) not in LOCAL_IMPORTS:
        out.append(f"{module} imports {target} inside a function: import it at the top, or "
                   f"give the reason in LOCAL_IMPORTS")
  return out


def test_no_circle_no_upward_import_no_unexplained_local_import():
  assert problems() == []


def test_the_graph_sees_what_the_code_imports():
  """The reader finds the edges the package has (so that an empty problem list means
  something): module-level, function-local and registry imports."""
  graph = import_graph()
  assert ("mim_jax.assembly", "top") in graph["mim_jax.train"]
  assert ("mim_jax.data.input_pipeline", "local") in graph["mim_jax.export"]
  assert ("mim_jax.objectives.maskalign", "dynamic") in graph["mim_jax.objectives"]
  assert ("mim_jax.teachers", "top") in graph["mim_jax.step"]
  assert {t for t, _ in graph["mim_jax.demo"]} >= {"mim_jax.train", "mim_jax.export"}
  assert set(LOCAL_IMPORTS) <= {(m, t) for m, edges in graph.items() for t, how in edges
                                if how == "local"}, "LOCAL_IMPORTS lists an import that is gone"


def _copy_with(tmp_path, relpath: str, old: str, new: str) -> str:
  """A copy of the package under tmp_path with `old` replaced by `new` in one file."""
  root = tmp_path / "tree"
  for module, path in module_files().items():
    dest = root / os.path.relpath(path, ROOT)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(path, encoding="utf-8") as f:
      text = f.read()
    if os.path.relpath(path, ROOT) == relpath:
      assert old in text, (relpath, old)
      text = text.replace(old, new, 1)
    dest.write_text(text)
  return str(root)


@pytest.mark.parametrize("relpath, old, new, expected", [
    # An upward import at module level: the loader reaching for the demo.
    ("mim_jax/teachers/zoo.py", "import dataclasses\n", "import dataclasses\n"
     "from mim_jax import demo\n", "mim_jax.teachers.zoo imports mim_jax.demo (top), a higher"),
    # The old circle through a function-local import: init_from -> export -> init_from.
    ("mim_jax/init_from.py", "  own = layout.position_embedding({}, vit)\n",
     "  from mim_jax import export  # pylint: disable=import-outside-toplevel\n"
     "  own = export.position_embedding({}, vit)\n", "import circle: "),
    # A circle through the registry: an objective module's helper asking the registry.
    ("mim_jax/objectives/common.py", "from mim_jax import config as config_lib\n",
     "from mim_jax import config as config_lib\nfrom mim_jax import objectives\n",
     "import circle: "),
])
def test_a_broken_copy_fails(tmp_path, relpath, old, new, expected):
  root = _copy_with(tmp_path, relpath, old, new)
  found = problems(root)
  assert any(p.startswith(expected) or expected in p for p in found), found


# Run in a fresh interpreter: for each module, every module of the package is forgotten, then
# that one is imported first. Third-party packages stay loaded (a circle of the package does
# not depend on them), which makes one process do in seconds what one per module does in minutes.
# Kept once loaded: mim_jax.data.digits, which registers its dataset with TFDS (twice is an
# error) and imports nothing of the package.
_IMPORT_EACH = """
import importlib, json, sys
KEEP = {"mim_jax.data.digits"}
failed = {}
for name in sys.argv[1:]:
  for loaded in [m for m in sys.modules if m.split(".")[0] == "mim_jax" and m not in KEEP]:
    del sys.modules[loaded]
  try:
    importlib.import_module(name)
  except Exception as e:  # pylint: disable=broad-except
    failed[name] = f"{type(e).__name__}: {e}"
print(json.dumps(failed))
"""


def import_each_first(root: str = ROOT) -> dict[str, str]:
  """{module: its import error} for the modules of the tree at `root` that fail to import when
  no other module of the package was imported before them."""
  r = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *module_files(root)], cwd=root,
                     text=True, capture_output=True, timeout=600,
                     env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
                              PYTHONPATH=root))
  assert r.returncode == 0, r.stderr[-2000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_every_module_imports_first_in_a_fresh_process(tmp_path):
  assert import_each_first() == {}
  # A circle that only the import order hides: export takes a name from init_from, and
  # init_from imports export at its top. Imported first, init_from fails.
  root = _copy_with(tmp_path, "mim_jax/init_from.py", "from mim_jax.models import vit as vit_lib\n",
                    "from mim_jax import export\nfrom mim_jax.models import vit as vit_lib\n")
  export_py = os.path.join(root, "mim_jax", "export.py")
  with open(export_py, encoding="utf-8") as f:
    text = f.read().replace("from mim_jax import init_from\n",
                            "from mim_jax import init_from\nfrom mim_jax.init_from import check\n")
  with open(export_py, "w", encoding="utf-8") as f:
    f.write(text)
  failed = import_each_first(root)
  assert "partially initialized module 'mim_jax.init_from'" in failed.get("mim_jax.init_from", "")

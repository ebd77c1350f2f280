"""The architecture's rules, checked on the source: who may import whom, and how long a module may be.

The rules are the ones docs/architecture.md (and README's "Architecture" section) state. Imports are read with ast
from every file of src/dlfp at any depth, so lazy imports inside functions and TYPE_CHECKING imports count too;
nothing is imported to check them. Each rule is a function from the parsed package to its violations, and
`test_each_rule_sees_a_planted_violation` runs every rule on a copy of src/dlfp with one violation added: a rule
that stopped seeing violations fails there, not silently here.
"""

from __future__ import annotations

import ast
import functools
import graphlib
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "dlfp"

LONG_MODULE_LINES = 450  # a module over this says why in its docstring, with LONG_MODULE_MARKER
LONG_MODULE_MARKER = "lines on purpose:"  # e.g. "One module of about 550 lines on purpose: <why>"
STAGE_MODULE_LINES = 260  # a stage reads, calls libraries and writes; more than this is library code in disguise
CLI = "dlfp.cli"  # the one module that imports stages (lazily)
STAGES = "dlfp.stages"
EVERYONE_MAY_IMPORT = "layout"  # names and paths defined once; imports nothing of dlfp itself

# A unit is a top-level module or package of dlfp (its first name after `dlfp.`), except the modules named here,
# which are units of their own: dlfp.models.dlib_files only locates dlib's model files and imports nothing of
# dlfp, so faces/ may use it while models/ (dlib_resnet) uses faces/ (the chip frame) without a package cycle.
OWN_UNITS = {"dlfp.models.dlib_files": "models.dlib_files"}

# What each unit may import besides itself and `layout`: the allowed direction of every import. The table has
# no cycle (checked below), so neither has the code. docs/architecture.md describes each unit with this list.
ALLOWED_IMPORTS: dict[str, frozenset[str]] = {name: frozenset(allowed) for name, allowed in {
    "dlfp": (),  # the package's empty __init__
    "layout": (),
    "params": (),
    "io": (),
    "devices": (),
    "html": (),
    "ffhq": (),
    "models.dlib_files": (),
    "shards": ("io",),
    "degradation": ("io", "params"),
    "faces": ("io", "models.dlib_files"),
    "models": ("io", "devices", "faces", "models.dlib_files"),
    "losses": ("faces", "models", "models.dlib_files"),
    "metrics": ("io", "devices", "faces", "models", "models.dlib_files"),
    "bias": ("io", "params", "faces", "metrics"),
    "inference": ("io", "devices", "models"),
    "restorers": ("io", "devices", "faces", "inference", "models"),
    "train": ("io", "params", "devices", "shards", "degradation", "faces", "models", "models.dlib_files", "losses",
              "metrics"),
    "photos": ("io", "devices", "html", "faces", "models", "models.dlib_files", "inference", "restorers"),
    "report": ("io", "params", "html", "shards"),
    "stages": ("io", "params", "devices", "ffhq", "shards", "degradation", "faces", "models", "models.dlib_files",
               "losses", "metrics", "bias", "inference", "restorers", "train", "report"),
    # cli: after `dlfp restore --weights gfpgan-v1.x`, the release file's model card (report/model_card.py); photos/
    # may not import report/, and the card is not a stage's output
    "cli": ("params", "photos", "stages", "report"),
    "__main__": ("cli",),
}.items()}
LIBRARIES_BELOW_PHOTOS = ("photos", "restorers", "inference", "faces", "html")  # `dlfp restore INPUT...` needs these
NOT_FOR_PHOTOS = ("stages", "train", "report")

# Modules of one package that may import each other only in this order (a module imports earlier ones only).
SIBLING_ORDER = {"dlfp.shards": ("format", "streamed", "local")}


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. "dlfp.stages.evaluate.scoring" ("dlfp.stages.evaluate" for its __init__.py)
    path: Path
    lines: int
    docstring: str
    imports: frozenset[str]  # the dlfp modules it imports, anywhere in the file


def _module_name(root: Path, path: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(tree: ast.Module, name: str, is_package: bool) -> list[str]:
    """Every module name an import statement names (`from a import b`: a.b, which is a when b is no module), with
    relative imports resolved."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


@functools.cache
def _scan(text: str, name: str, is_package: bool) -> tuple[str, tuple[str, ...]]:
    """A module's docstring and imported names (cached: the planted copies below differ in one file only)."""
    tree = ast.parse(text)
    return ast.get_docstring(tree) or "", tuple(_imported_names(tree, name, is_package))


def parse_package(root: Path) -> dict[str, Module]:
    """Every module under root (a folder named like the package), with the package modules it imports."""
    paths = {_module_name(root, path): path for path in sorted(root.rglob("*.py"))}
    modules = {}
    for name, path in paths.items():
        text = path.read_text(encoding="utf-8")
        docstring, imported_names = _scan(text, name, path.name == "__init__.py")
        imports = set()
        for imported in imported_names:
            if imported.split(".")[0] != root.name:
                continue
            resolved = imported
            while resolved not in paths and "." in resolved:  # `from dlfp.x import NAME`: NAME is no module
                resolved = resolved.rsplit(".", 1)[0]
            if resolved == root.name != imported:  # no such unit (e.g. an old, removed package): keep its name
                resolved = ".".join(imported.split(".")[:2])
            if resolved != name:
                imports.add(resolved)
        modules[name] = Module(name, path, len(text.splitlines()), docstring, frozenset(imports))
    return modules


def unit_of(name: str) -> str:
    if name in OWN_UNITS:
        return OWN_UNITS[name]
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _is_stage(name: str) -> bool:
    return name == STAGES or name.startswith(STAGES + ".")


def _stage_of(name: str) -> str | None:
    """The stage a module of dlfp.stages belongs to: dlfp.stages.evaluate.scoring -> evaluate."""
    parts = name.split(".")
    return parts[2] if _is_stage(name) and len(parts) > 2 else None


def _find_cycle(graph: Mapping[str, set[str]]) -> list[str]:
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        return [" -> ".join(reversed(error.args[1]))]
    return []


# ----------------------------------------------------------------------------------------------------- the rules
def stage_importers(modules: Mapping[str, Module]) -> list[str]:
    """Nothing imports dlfp.stages but the CLI (and a stage its own submodules)."""
    return [f"{module.name} imports {imported}" for module in modules.values()
            if module.name != CLI and not _is_stage(module.name)
            for imported in sorted(module.imports) if _is_stage(imported)]


def cross_stage_imports(modules: Mapping[str, Module]) -> list[str]:
    """A stage imports no other stage: what two stages share is a library below them."""
    return [f"{module.name} imports {imported}" for module in modules.values() if _is_stage(module.name)
            for imported in sorted(module.imports)
            if _is_stage(imported) and _stage_of(imported) != _stage_of(module.name)]


def forbidden_imports(modules: Mapping[str, Module]) -> list[str]:
    """Every import goes in an allowed direction (ALLOWED_IMPORTS); a new unit must be added to the table."""
    violations = []
    for module in modules.values():
        unit = unit_of(module.name)
        if unit not in ALLOWED_IMPORTS:
            violations.append(f"{module.name}: unit {unit!r} is not in ALLOWED_IMPORTS (add it with what it may "
                              "import, and its paragraph in docs/architecture.md)")
            continue
        allowed = ALLOWED_IMPORTS[unit] | {unit, EVERYONE_MAY_IMPORT}
        violations += [f"{module.name} imports {imported} ({unit} may import {sorted(ALLOWED_IMPORTS[unit])})"
                       for imported in sorted(module.imports) if unit_of(imported) not in allowed]
    return violations


def page_imports(modules: Mapping[str, Module]) -> list[str]:
    """A report page imports no other page: what pages share lives in report/readers.py and report/plots.py."""
    pages = {name for name in modules if name.startswith("dlfp.report.") and name.endswith("_page")}
    return [f"{name} imports page {imported}" for name in sorted(pages)
            for imported in sorted(modules[name].imports & pages)]


def unit_cycles(modules: Mapping[str, Module]) -> list[str]:
    graph: dict[str, set[str]] = {}
    for module in modules.values():
        unit = unit_of(module.name)
        graph.setdefault(unit, set()).update(unit_of(name) for name in module.imports if unit_of(name) != unit)
    return _find_cycle(graph)


def module_cycles(modules: Mapping[str, Module]) -> list[str]:
    return _find_cycle({module.name: set(module.imports) for module in modules.values()})


def sibling_order_violations(modules: Mapping[str, Module]) -> list[str]:
    violations = []
    for package, order in SIBLING_ORDER.items():
        for position, name in enumerate(order):
            earlier = {f"{package}.{sibling}" for sibling in order[:position]}
            module = modules[f"{package}.{name}"]
            violations += [f"{module.name} imports {imported} (order: {' <- '.join(order)})"
                           for imported in sorted(module.imports)
                           if imported.startswith(package + ".") and imported not in earlier]
    return violations


def unexplained_long_modules(modules: Mapping[str, Module]) -> list[str]:
    return [f"{module.name}: {module.lines} lines, and its docstring does not say why ({LONG_MODULE_MARKER!r})"
            for module in modules.values()
            if module.lines > LONG_MODULE_LINES and LONG_MODULE_MARKER not in module.docstring]


def long_stage_modules(modules: Mapping[str, Module]) -> list[str]:
    return [f"{module.name}: {module.lines} lines (a stage module stays under {STAGE_MODULE_LINES}: move the "
            "work into a library)" for module in modules.values()
            if _is_stage(module.name) and module.lines > STAGE_MODULE_LINES]


RULES: dict[str, Callable[[Mapping[str, Module]], list[str]]] = {
    "stage_importers": stage_importers,
    "cross_stage_imports": cross_stage_imports,
    "forbidden_imports": forbidden_imports,
    "page_imports": page_imports,
    "unit_cycles": unit_cycles,
    "module_cycles": module_cycles,
    "sibling_order": sibling_order_violations,
    "long_modules": unexplained_long_modules,
    "long_stage_modules": long_stage_modules,
}


# ------------------------------------------------------------------------------------------ the rules on src/dlfp
@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    return parse_package(SRC)


def test_the_whole_source_is_read_with_its_lazy_imports(modules: dict[str, Module]) -> None:
    """The rules see every part of dlfp, and imports inside functions (the CLI's lazy stage imports) count."""
    assert {unit_of(name) for name in modules} >= {"cli", "params", "io", "shards", "faces", "degradation",
                                                    "models", "losses", "metrics", "bias", "restorers", "train",
                                                    "stages", "photos", "report"}
    assert {"dlfp.stages.acquire", "dlfp.stages.restore", "dlfp.stages.report"} <= modules[CLI].imports
    assert "dlfp.stages.evaluate.scoring" in modules["dlfp.stages.evaluate"].imports  # `from a.b import c` -> a.b.c
    assert len([name for name in modules if name.startswith("dlfp.photos.")]) >= 7
    assert {"dlfp.faces.geometry", "dlfp.restorers", "dlfp.html", "dlfp.degradation", "dlfp.ffhq"} <= set(modules)
    assert {"dlfp.report.data_page", "dlfp.report.training_page", "dlfp.report.model_page"} <= set(modules)


def test_nothing_but_the_cli_imports_a_stage(modules: dict[str, Module]) -> None:
    assert stage_importers(modules) == []


def test_a_stage_imports_no_other_stage(modules: dict[str, Module]) -> None:
    assert cross_stage_imports(modules) == []


def test_every_import_goes_in_an_allowed_direction(modules: dict[str, Module]) -> None:
    assert forbidden_imports(modules) == []


def test_only_the_cli_may_import_stages_and_photos_reaches_no_stage_train_or_report() -> None:
    """The table itself keeps libraries below the stages, and `dlfp restore INPUT...` off stages, train, report."""
    assert {unit for unit, allowed in ALLOWED_IMPORTS.items() if "stages" in allowed} == {"cli"}
    assert {unit: sorted(ALLOWED_IMPORTS[unit] & set(NOT_FOR_PHOTOS)) for unit in LIBRARIES_BELOW_PHOTOS} == {
        unit: [] for unit in LIBRARIES_BELOW_PHOTOS}
    assert ALLOWED_IMPORTS[EVERYONE_MAY_IMPORT] == frozenset()


def test_the_allowed_directions_have_no_cycle() -> None:
    assert _find_cycle({unit: set(allowed) for unit, allowed in ALLOWED_IMPORTS.items()}) == []


def test_no_import_cycle_between_packages_or_modules(modules: dict[str, Module]) -> None:
    assert unit_cycles(modules) == []
    assert module_cycles(modules) == []


def test_shard_modules_import_each_other_one_way_only(modules: dict[str, Module]) -> None:
    """format <- streamed <- local, never back (the old dlfp.data.shards and dlfp.data.streams imported each other)."""
    assert sibling_order_violations(modules) == []
    assert "dlfp.shards.format" in modules["dlfp.shards.streamed"].imports


def test_report_pages_import_no_other_page(modules: dict[str, Module]) -> None:
    assert page_imports(modules) == []


def test_every_long_module_says_why(modules: dict[str, Module]) -> None:
    assert unexplained_long_modules(modules) == []


def test_stage_modules_stay_short(modules: dict[str, Module]) -> None:
    assert long_stage_modules(modules) == []


# ------------------------------------------------------------------------------- each rule sees a planted violation
LAZY = "\n\ndef _planted() -> None:\n    {}\n"  # a violation inside a function: lazy imports count
PLANTS = {
    # rule: (file under dlfp/, text appended to it, fragments that one violation the rule reports must all hold)
    "stage_importers": ("shards/format.py", LAZY.format("from dlfp.stages import shard"),
                        ("dlfp.shards.format imports dlfp.stages.shard",)),
    "cross_stage_imports": ("stages/bias.py", "\nfrom dlfp.stages.evaluate import scoring\n",
                            ("dlfp.stages.bias imports dlfp.stages.evaluate.scoring",)),
    "forbidden_imports": ("photos/summary.py", LAZY.format("import dlfp.train.engine.ema"),
                          ("dlfp.photos.summary imports dlfp.train.engine.ema",)),
    "page_imports": ("report/data_page.py", LAZY.format("from . import training_page"),
                     ("dlfp.report.data_page imports page dlfp.report.training_page",)),
    "unit_cycles": ("io/hashing.py", LAZY.format("from dlfp.shards.format import TEST_SPLIT"),
                    ("io -> ", "shards -> ")),
    "module_cycles": ("shards/format.py", LAZY.format("from dlfp.shards.local import iter_samples"),
                      ("dlfp.shards.format -> ", "dlfp.shards.local -> ")),
    "sibling_order": ("shards/streamed.py", LAZY.format("from dlfp.shards import local"),
                      ("dlfp.shards.streamed imports dlfp.shards.local",)),
    "long_modules": ("html.py", "# padding\n" * LONG_MODULE_LINES, ("dlfp.html: ", "docstring does not say why")),
    "long_stage_modules": ("stages/shard.py", "# padding\n" * STAGE_MODULE_LINES, ("dlfp.stages.shard: ",)),
}


@pytest.fixture
def planted_copy(tmp_path: Path) -> Callable[[str, str], dict[str, Module]]:
    def plant(relative: str, text: str) -> dict[str, Module]:
        root = tmp_path / "dlfp"
        shutil.copytree(SRC, root, ignore=shutil.ignore_patterns("__pycache__", "templates"))
        with (root / relative).open("a", encoding="utf-8") as handle:
            handle.write(text)
        return parse_package(root)

    return plant


@pytest.mark.parametrize("rule", sorted(PLANTS))
def test_each_rule_sees_a_planted_violation(rule: str, planted_copy) -> None:
    relative, text, expected = PLANTS[rule]
    violations = RULES[rule](planted_copy(relative, text))
    assert any(all(fragment in violation for fragment in expected) for violation in violations), violations


def test_a_new_unit_must_be_added_to_the_table(planted_copy) -> None:
    violations = forbidden_imports(planted_copy("tools_planted.py", "import dlfp.io.atomic\n"))
    assert violations == ["dlfp.tools_planted: unit 'tools_planted' is not in ALLOWED_IMPORTS (add it with what it "
                          "may import, and its paragraph in docs/architecture.md)"]


def test_a_missing_module_imported_is_kept_by_name(planted_copy) -> None:
    """An import of a dlfp module that does not exist (an old path) is reported, not dropped."""
    violations = forbidden_imports(planted_copy("photos/html.py", LAZY.format("from dlfp.restore import photos")))
    assert any("dlfp.photos.html imports dlfp.restore " in violation for violation in violations), violations


def test_a_long_module_whose_docstring_says_why_passes(planted_copy) -> None:
    padded = planted_copy("html.py", "# padding\n" * LONG_MODULE_LINES)
    assert [name for name in unexplained_long_modules(padded) if name.startswith("dlfp.html:")]
    root = padded["dlfp.html"].path
    root.write_text(root.read_text(encoding="utf-8").replace('"""', f'"""Many {LONG_MODULE_MARKER} a test.\n\n', 1),
                    encoding="utf-8")
    assert [name for name in unexplained_long_modules(parse_package(root.parent))
            if name.startswith("dlfp.html:")] == []


def test_from_the_root_package_import_a_module_is_that_module(planted_copy) -> None:
    """`from dlfp import inference` imports dlfp.inference (allowed for restorers), not the root package itself."""
    planted = planted_copy("restorers.py", LAZY.format("from dlfp import inference, train"))
    assert {"dlfp.inference", "dlfp.train"} <= planted["dlfp.restorers"].imports
    assert [violation.split(" (")[0] for violation in forbidden_imports(planted)] == [
        "dlfp.restorers imports dlfp.train"]

"""Code dependencies of a workflow stage: the package's own files that a stage runs.

Snakemake tracks a rule's shell command or ``script:`` file, not the package that command
imports. Each rule therefore carries a content hash of its stage's files as a parameter
(``code=code_version("lorascope.training.stage:train_lora")`` under ``params:`` in
``workflow/rules/*.smk``): editing one of those files changes the hash, Snakemake's params
trigger reruns that stage, and everything downstream of it follows.

Why a hash in ``params:`` and not the files as ``input:``: measured on the 10,000-job
synthetic study (``benchmarks/bench_dag.py``), ~20 extra input files per job made the dry run
40 % slower (27 s against 19 s); and input paths are absolute, so reinstalling the package
elsewhere (editable -> wheel, a new venv, a moved checkout) would change every job's input set
and rerun the whole study. The hash covers the files' contents under paths relative to the
package folder: where the package is installed does not matter, what it contains does. (An
mtime-only touch reruns nothing, as Snakemake also ignores for small input files whose
checksum it recorded.)

The files are found statically, without importing (running) anything: from the entry points,
the transitive closure of intra-package imports in the modules' syntax trees, including
imports inside functions, ``from lorascope.x import y`` and relative imports.

Entry points and granularity:

- ``"lorascope.summarize"``: the whole module, every import in it (also inside functions).
- ``"lorascope.evaluate:evaluate"``: one function. The module's top-level imports always
  count (they run on import); of the module's functions and classes only those the entry
  uses (by name, transitively) add their own imports. A module holding entry points whose
  lazy imports differ (``lorascope.data.prepare``: ``prepare_train``, ``prepare_split``) is
  thus split by entry.
- ``from lorascope.m import f`` where ``f`` is a function or class of ``m`` follows ``f`` (and
  what it uses in ``m``) the same way, and so does ``from lorascope import m`` for each
  ``m.f`` the importing code reads. A module used otherwise (``import lorascope.m``, ``m``
  passed on as a value, ``import *``) is followed as a whole.

Dependencies are per file: a stage depends on every file it uses anything from. A module
always brings its parent packages' ``__init__.py`` (they run first on import). Files are
found where the ``lorascope`` package is installed (its import spec's search location:
``src/lorascope/`` for an editable install, ``site-packages/lorascope/`` for a normal one).
``lorascope.cli`` is deliberately not an entry point of any stage: it only parses arguments
and lazily dispatches to every stage, so following it would make every stage depend on every
module. Package data a stage reads (the embedded TREC DL tables, the paper's reference
values) is added with ``data=`` globs relative to the package folder.

``python -m lorascope.study.codedeps lorascope.evaluate:evaluate`` lists one entry's files with their
hashes and the resulting code version.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.util
import logging
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGE = "lorascope"


class CodeDepsError(ValueError):
    """An entry point or data glob that does not name anything in the package."""


@dataclass(frozen=True)
class Imports:
    """Intra-package imports of one scope.

    Attributes:
        modules: used as a whole (``import m``, ``from pkg import m`` of a submodule).
        units: (module, name) of ``from m import name`` (a function, class or constant).
        loads: imported for the names above: their top level runs, nothing more.
    """

    modules: frozenset[str] = frozenset()
    units: frozenset[tuple[str, str]] = frozenset()
    loads: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ModuleInfo:
    """What one module's syntax tree says about its dependencies.

    Attributes:
        path: the source file.
        top: imports run when the module is imported (outside any function or class body).
        top_names: names the top-level code refers to (its functions and classes among them
            are followed whenever the module is imported: a dispatch table, a default).
        defs: per top-level function or class: its own imports and the names it refers to
            (those naming this module's functions and classes are followed with it).
    """

    path: Path
    top: Imports
    top_names: frozenset[str]
    defs: dict[str, tuple[Imports, frozenset[str]]] = field(default_factory=dict)


@cache
def package_root(package: str = PACKAGE) -> Path:
    """The folder the installed package is imported from (without importing it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CodeDepsError(f"package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


@cache
def module_file(module: str) -> Path | None:
    """``lorascope.a.b`` -> ``<root>/a/b.py`` or ``<root>/a/b/__init__.py`` (None if neither)."""
    head, *rest = module.split(".")
    base = package_root(head).joinpath(*rest)
    for candidate in (base.with_suffix(".py") if rest else None, base / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _is_package(module: str) -> bool:
    path = module_file(module)
    return path is not None and path.name == "__init__.py"


def _absolute(module: str, node: ast.ImportFrom) -> str | None:
    """The absolute module name of a ``from ... import`` (relative ones resolved)."""
    if node.level == 0:
        return node.module
    package = module if _is_package(module) else module.rpartition(".")[0]
    parts = package.split(".")
    if node.level - 1 >= len(parts):
        return None  # beyond the top-level package: not ours
    base = ".".join(parts[: len(parts) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


def _ours(name: str | None, package: str) -> bool:
    return name is not None and (name == package or name.startswith(package + "."))


@dataclass
class _Usage:
    """How one scope's code uses names: every read of a name, and the attributes read from
    it (``m.f`` counts one read of ``m`` as an attribute base, and ``f``)."""

    reads: Counter[str]
    as_base: Counter[str]
    attrs: dict[str, set[str]]

    @classmethod
    def of(cls, nodes: Iterable[ast.AST]) -> _Usage:
        reads: Counter[str] = Counter()
        as_base: Counter[str] = Counter()
        attrs: dict[str, set[str]] = {}
        for node in nodes:
            if isinstance(node, ast.Name):
                reads[node.id] += 1
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                as_base[node.value.id] += 1
                attrs.setdefault(node.value.id, set()).add(node.attr)
        return cls(reads, as_base, attrs)

    def attributes(self, name: str) -> set[str] | None:
        """The attributes read from ``name``, or None when ``name`` is also used bare
        (passed on, iterated, ...): then the whole module it names counts."""
        if self.reads[name] != self.as_base[name]:
            return None
        return self.attrs.get(name, set())


def _scope_imports(nodes: Sequence[ast.AST], module: str, package: str, usage: _Usage) -> Imports:
    """The imports in ``nodes``; a submodule bound by ``from pkg import m`` counts only for
    the attributes ``usage`` (the code that can see the name) reads from it."""
    modules: set[str] = set()
    units: set[tuple[str, str]] = set()
    loads: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            modules |= {a.name for a in node.names if _ours(a.name, package)}
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            if not _ours(source, package):
                continue
            loads.add(source)  # type: ignore[arg-type]
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if alias.name == "*":
                    modules.add(source)  # type: ignore[arg-type]
                elif module_file(sub) is not None:  # a submodule
                    attrs = usage.attributes(alias.asname or alias.name)
                    if attrs is None:
                        modules.add(sub)
                    else:
                        loads.add(sub)
                        units |= {(sub, attr) for attr in attrs}
                else:
                    units.add((source, alias.name))  # type: ignore[arg-type]
    return Imports(frozenset(modules), frozenset(units), frozenset(loads))


@cache
def module_info(module: str, package: str = PACKAGE) -> ModuleInfo:
    """Parse one module of the package (cached: each file is parsed once per process)."""
    path = module_file(module)
    if path is None:
        raise CodeDepsError(
            f"code dependency {module!r}: no such module in {package_root(package)}"
        )
    tree = ast.parse(path.read_bytes(), filename=str(path))
    defs: dict[str, tuple[Imports, frozenset[str]]] = {}
    top_nodes: list[ast.AST] = []
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            inner = list(ast.walk(stmt))
            usage = _Usage.of(inner)
            defs[stmt.name] = (
                _scope_imports(inner, module, package, usage),
                frozenset(usage.reads),
            )
        else:
            top_nodes.extend(ast.walk(stmt))
    everywhere = _Usage.of(ast.walk(tree))  # all code can see a top-level import's name
    top = _scope_imports(top_nodes, module, package, everywhere)
    top_names = frozenset(_Usage.of(top_nodes).reads)
    return ModuleInfo(path=path, top=top, top_names=top_names, defs=defs)


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def module_closure(entries: Sequence[str], package: str = PACKAGE) -> dict[str, Path]:
    """Every package module the entries run: {module name: source file}, sorted by name.

    ``entries``: ``"pkg.module"`` (the whole module) or ``"pkg.module:function"``.
    """
    whole: set[str] = set()
    units: set[tuple[str, str]] = set()
    loaded: set[str] = set()
    todo_modules: list[str] = []
    todo_units: list[tuple[str, str]] = []
    for entry in entries:
        module, _, name = entry.partition(":")
        if not _ours(module, package):
            raise CodeDepsError(f"code dependency {entry!r}: not a module of {package!r}")
        module_info(module, package)  # fails early, naming the entry
        if name:
            if name not in module_info(module, package).defs:
                raise CodeDepsError(f"code dependency {entry!r}: {module} defines no {name!r}")
            todo_units.append((module, name))
        else:
            todo_modules.append(module)

    def load(module: str) -> None:
        """A module is imported: its parents and its top-level code run."""
        for mod in (*_parents(module), module):
            if mod in loaded or module_file(mod) is None:
                continue
            loaded.add(mod)
            info = module_info(mod, package)
            add(info.top)
            todo_units.extend((mod, n) for n in info.top_names if n in info.defs)

    def add(imports: Imports) -> None:
        todo_modules.extend(imports.modules)
        todo_units.extend(imports.units)
        for mod in imports.loads:
            load(mod)

    while todo_modules or todo_units:
        if todo_modules:
            module = todo_modules.pop()
            if module in whole or module_file(module) is None:
                continue
            whole.add(module)
            load(module)
            info = module_info(module, package)
            for imports, _ in info.defs.values():
                add(imports)
            continue
        module, name = todo_units.pop()
        if (module, name) in units or module in whole:
            continue
        units.add((module, name))
        load(module)
        info = module_info(module, package)
        if name not in info.defs:
            continue  # a constant or an imported name: the module's top level covers it
        imports, names = info.defs[name]
        add(imports)
        todo_units.extend((module, n) for n in names if n in info.defs)
    return {m: module_file(m) for m in sorted(loaded)}  # type: ignore[misc]


def data_files(globs: Sequence[str], package: str = PACKAGE) -> list[Path]:
    """Package data files matching ``globs`` (relative to the package folder; a folder means
    every file under it). A glob that matches nothing is an error naming it."""
    root = package_root(package)
    out: set[Path] = set()
    for pattern in globs:
        found = set()
        for path in root.glob(pattern):
            if path.is_dir():
                found |= {
                    p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                }
            elif path.is_file():
                found.add(path)
        if not found:
            raise CodeDepsError(f"code dependency data {pattern!r}: no file under {root} matches")
        out |= found
    return sorted(out)


@cache
def _code_deps(entries: tuple[str, ...], data: tuple[str, ...], package: str) -> tuple[str, ...]:
    files = [*module_closure(entries, package).values(), *data_files(data, package)]
    return tuple(str(p) for p in sorted(set(files)))


def code_deps(*entries: str, data: Sequence[str] = (), package: str = PACKAGE) -> list[str]:
    """The source files (and package data files) a stage runs, as absolute paths, sorted.

    Computed once per distinct arguments in a process (the workflow calls it at parse time
    and from input functions). See the module docstring for what ``entries`` may be.
    """
    if not entries:
        raise CodeDepsError("code_deps needs at least one entry point")
    return list(_code_deps(tuple(entries), tuple(data), package))


@cache
def _file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def file_digests(*entries: str, data: Sequence[str] = (), package: str = PACKAGE) -> dict[str, str]:
    """{path relative to the package's parent folder (``lorascope/train.py``): sha256} of
    every file :func:`code_deps` lists."""
    parent = package_root(package).parent
    return {
        Path(path).relative_to(parent).as_posix(): _file_digest(path)
        for path in code_deps(*entries, data=data, package=package)
    }


@cache
def _code_version(entries: tuple[str, ...], data: tuple[str, ...], package: str) -> str:
    digests = file_digests(*entries, data=data, package=package)
    blob = "".join(f"{rel}\0{digest}\n" for rel, digest in sorted(digests.items()))
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def code_version(*entries: str, data: Sequence[str] = (), package: str = PACKAGE) -> str:
    """A short content hash (``sha256:<16 hex>``) of the files a stage runs: what a rule puts
    in ``params:`` so that editing any of them reruns it. Independent of where the package
    is installed; computed once per distinct arguments in a process."""
    return _code_version(tuple(entries), tuple(data), package)


def clear_caches() -> None:
    """Forget every parsed module, resolved path and file hash (after files changed)."""
    for cached in (package_root, module_file, module_info, _code_deps, _file_digest, _code_version):
        cached.cache_clear()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lorascope.study.codedeps",
        description="List the package files a stage's entry points run (its code dependencies), "
        "with their sha256 and the code version a rule's params carry.",
    )
    parser.add_argument("entries", nargs="+", help="pkg.module or pkg.module:function")
    parser.add_argument("--data", action="append", default=[], help="package data glob")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(message)s")
    try:
        digests = file_digests(*args.entries, data=args.data)
    except CodeDepsError as err:
        log.error("error: %s", err)
        return 1
    for rel, digest in digests.items():
        sys.stdout.write(f"{digest[:16]}  {rel}\n")
    sys.stdout.write(f"code version {code_version(*args.entries, data=args.data)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Find every TensorRT name mopt's code uses and check it against the TensorRT 10.x API and the 11.0 removals.

How uses are found (an AST walk over ``optimize/``, nothing is imported):

* **Roots.** The TensorRT module is always called ``trt`` in mopt (a parameter, a local from ``load_tensorrt()`` /
  ``import_module("tensorrt")``, or an attribute ``.trt``); :func:`naming_violations` fails the test if TensorRT is
  imported under another name, so no use hides behind an alias.
* **Objects from TensorRT.** Types flow from the stubs: ``trt.Builder(...)`` is a ``Builder``, a call of a stub
  method has the type of its return annotation (``builder.create_builder_config()`` -> ``IBuilderConfig``), an enum
  member is an instance of its enum, a property has its annotated type. Parameters, dataclass fields and return
  values annotated ``tensorrt.X`` (the ``TYPE_CHECKING`` import in ``optimize/tensorrt_api.py``) are ``X``;
  ``self.attr = <typed>`` types ``self.attr`` in every method of the class; module functions annotated to return
  ``tensorrt.X`` type their calls.
* **Each attribute read or written** on a typed object, ``getattr`` / ``hasattr`` with a constant name included,
  is a use ``Owner.name`` (``Owner`` ``tensorrt`` for the module itself).
* **Lookups by a name from data** (``getattr(trt.BuilderFlag, name)``) cannot be resolved statically: each is
  reported as a *dynamic site*, and the test maps every site to the closed set of names the code allows there
  (``tensorrt_api.BUILDER_FLAG_NAMES``...); a site the test does not map fails it.

What it cannot see: TensorRT objects passed through untyped values (``Any`` parameters, containers, ``**kwargs``)
without a ``tensorrt.X`` annotation, objects returned by stub methods without a return annotation, attributes on
the objects TensorRT hands to callbacks it defines (the logger's ``log`` arguments are plain values), and code
outside ``optimize/``. A use there is not checked; keeping every TensorRT call in ``optimize/tensorrt_api.py`` with
annotated parameters is what keeps that set empty (the test checks that uses stay in that module).
"""

from __future__ import annotations

import ast
import io
import re
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

MODULE = "tensorrt"


# --- the 10.x API from the type stubs -------------------------------------------------------------------------


@dataclass
class StubClass:
    name: str
    bases: list[str] = field(default_factory=list)
    members: dict[str, str | None] = field(default_factory=dict)  # member -> its type's class name, if any
    kinds: dict[str, str] = field(default_factory=dict)  # member -> "method" | "property" | "attribute" | "class"


def _annotation_class(node: ast.expr | None) -> str | None:
    """``IExecutionContext`` / ``tensorrt.ICudaEngine`` / ``X | None`` / ``typing.Optional[X]`` -> the class name."""
    if node is None:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            node = ast.parse(node.value, mode="eval").body
        except SyntaxError:
            return None
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _annotation_class(node.left) or _annotation_class(node.right)
    if isinstance(node, ast.Subscript) and _annotation_class(node.value) == "Optional":
        return _annotation_class(node.slice)
    return None


def _classvar_type(node: ast.expr) -> str | None:
    """``typing.ClassVar[BuilderFlag]`` -> ``BuilderFlag`` (an enum member); a plain annotation -> its class."""
    if isinstance(node, ast.Subscript) and _annotation_class(node.value) == "ClassVar":
        return _annotation_class(node.slice)
    return _annotation_class(node)


class StubAPI:
    """Module names and class members of the ``tensorrt`` package as its ``.pyi`` stubs declare them."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.module_names: set[str] = set()
        self.classes: dict[str, StubClass] = {}

    def _add_class(self, node: ast.ClassDef, prefix: str = "") -> None:
        qualname = prefix + node.name
        cls = self.classes.setdefault(qualname, StubClass(qualname))
        cls.bases = [b for b in (_annotation_class(base) for base in node.bases) if b]
        for item in node.body:
            if isinstance(item, ast.FunctionDef):
                decorators = {_annotation_class(d) for d in item.decorator_list}
                kind = "property" if "property" in decorators else "method"
                cls.members.setdefault(item.name, _annotation_class(item.returns))
                cls.kinds.setdefault(item.name, kind)
            elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                cls.members[item.target.id] = _classvar_type(item.annotation)
                cls.kinds[item.target.id] = "attribute"
            elif isinstance(item, ast.Assign):
                for target in item.targets:
                    if isinstance(target, ast.Name):
                        cls.members.setdefault(target.id, None)
                        cls.kinds.setdefault(target.id, "attribute")
            elif isinstance(item, ast.ClassDef):
                cls.members[item.name] = f"{qualname}.{item.name}"
                cls.kinds[item.name] = "class"
                self._add_class(item, prefix=f"{qualname}.")

    def add_module(self, tree: ast.Module, exported: bool) -> None:
        """Add a stub module's classes; ``exported``: its top-level names are names of ``tensorrt`` itself."""
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                self._add_class(node)
                if exported:
                    self.module_names.add(node.name)
            elif exported and isinstance(node, ast.FunctionDef):
                self.module_names.add(node.name)
            elif exported and isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                self.module_names.add(node.target.id)
            elif exported and isinstance(node, ast.Assign):
                self.module_names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif exported and isinstance(node, ast.ImportFrom):
                self.module_names.update(alias.asname or alias.name for alias in node.names)
            elif exported and isinstance(node, ast.Import):
                self.module_names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)

    def lookup(self, owner: str, name: str) -> tuple[bool, str | None, str | None]:
        """``(exists, type of the member, kind)`` for ``owner.name``; ``owner`` ``tensorrt`` is the module."""
        if owner == MODULE:
            if name in self.module_names or name in self.classes:
                return True, name if name in self.classes else None, "class" if name in self.classes else None
            return name in ("__version__", "__file__", "__name__"), None, None
        seen: set[str] = set()
        queue = [owner]
        while queue:
            current = queue.pop(0)
            if current in seen or current not in self.classes:
                continue
            seen.add(current)
            cls = self.classes[current]
            if name in cls.members:
                return True, cls.members[name], cls.kinds.get(name)
            queue.extend(cls.bases)
        # Every pybind11 object has these; the stubs do not repeat them on each class.
        return name in ("__init__", "__class__", "__name__", "__doc__"), None, None


def _stub_files(source: Path) -> Iterator[tuple[str, str]]:
    """``(path inside the package, text)`` of every ``.pyi`` in a tensorrt-stubs wheel or installed folder."""
    if source.is_file() and source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            for name in wheel.namelist():
                if name.endswith(".pyi"):
                    yield name, io.TextIOWrapper(wheel.open(name), encoding="utf-8").read()
        return
    for path in sorted(source.rglob("*.pyi")):
        yield str(path.relative_to(source)), path.read_text(encoding="utf-8")


_DEF = re.compile(r"^(\s*def \w+)\(.*\)(\s*->.*)?:\s*$")


def parse_stub(text: str, name: str = "<stub>") -> ast.Module:
    """Parse a ``.pyi``; signatures pybind11-stubgen wrote that are not Python (a parameter without a default after
    ones with defaults) lose their parameters, keeping the name and the return annotation the walk needs."""
    lines = text.splitlines()
    for _ in range(1000):
        try:
            return ast.parse("\n".join(lines), filename=name)
        except SyntaxError as exc:
            index = (exc.lineno or 0) - 1
            match = _DEF.match(lines[index]) if 0 <= index < len(lines) else None
            if match is None:
                raise
            lines[index] = f"{match.group(1)}(*args, **kwargs){match.group(2) or ''}:"
    raise SyntaxError(f"{name}: too many signatures to repair")


def load_stubs(source: Path) -> StubAPI:
    """Parse the stubs (a ``tensorrt_stubs-*.whl`` or a folder holding ``tensorrt/`` and ``tensorrt_bindings/``)."""
    files = {name.replace("\\", "/"): text for name, text in _stub_files(source)}
    top = next((text for name, text in files.items() if name.endswith("tensorrt/__init__.pyi")), None)
    if top is None:
        raise FileNotFoundError(f"{source} holds no tensorrt/__init__.pyi")
    version = "unknown"
    top_tree = parse_stub(top, "tensorrt/__init__.pyi")
    for node in top_tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "__version__" and node.value:
            version = ast.literal_eval(node.value)
    api = StubAPI(version)
    api.add_module(top_tree, exported=True)
    for name, text in files.items():
        if not name.endswith("tensorrt/__init__.pyi"):
            api.add_module(parse_stub(text, name), exported=False)
    return api


# --- uses in mopt's code --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Use:
    """One TensorRT name the code reads or writes."""

    owner: str  # "tensorrt" (the module) or a class name such as "ICudaEngine"
    name: str
    file: str
    line: int

    @property
    def qualname(self) -> str:
        return self.name if self.owner == MODULE else f"{self.owner}.{self.name}"

    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class DynamicSite:
    """A ``getattr(<TensorRT object>, <name from data>)``: which names reach it is known only at run time."""

    owner: str
    function: str  # "module.function" it sits in
    file: str
    line: int


# Types in the walk: ("module",), ("class", Name), ("instance", Name), ("method", Owner, name), ("self", ClassName)
Type = tuple


class _Walker:
    def __init__(self, api: StubAPI, module: str, file: str, tree: ast.Module) -> None:
        self.api, self.module, self.file, self.tree = api, module, file, tree
        self.uses: list[Use] = []
        self.dynamic: list[DynamicSite] = []
        self.functions: dict[str, Type | None] = {}  # module function -> the type it is annotated to return
        self.self_attrs: dict[str, dict[str, Type]] = {}  # class -> attribute -> type
        self.field_types: dict[str, dict[str, Type]] = {}  # dataclass-like class -> annotated field -> type
        self.class_stack: list[str] = []
        self.function_stack: list[str] = []
        self.recording = False

    # annotations
    def _annotation_type(self, node: ast.expr | None) -> Type | None:
        """``tensorrt.X`` (with ``X | None`` and the like) -> instance X; records X as a use."""
        if node is None:
            return None
        for sub in ast.walk(node):
            if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == MODULE:
                self._record(MODULE, sub.attr, sub)
                return ("instance", sub.attr)
        if isinstance(node, ast.Name) and node.id in self.field_types:
            return ("local", node.id)
        return None

    def _record(self, owner: str, name: str, node: ast.AST) -> tuple[bool, str | None, str | None]:
        found = self.api.lookup(owner, name)
        if self.recording:
            self.uses.append(Use(owner, name, self.file, getattr(node, "lineno", 0)))
        return found

    def _member(self, base: Type | None, name: str, node: ast.AST) -> Type | None:
        if base is None:
            return None
        if base[0] == "module":
            exists, _, kind = self._record(MODULE, name, node)
            return ("class", name) if kind == "class" or name in self.api.classes else None
        if base[0] in ("class", "instance"):
            owner = base[1]
            exists, member_type, kind = self._record(owner, name, node)
            if kind == "class" and member_type:
                return ("class", member_type)
            if kind == "method":
                return ("method", owner, name)
            if member_type and member_type in self.api.classes:
                return ("instance", member_type)
            return None
        if base[0] == "self":
            return self.self_attrs.get(base[1], {}).get(name)
        if base[0] == "local":
            return self.field_types.get(base[1], {}).get(name)
        return None

    def typeof(self, node: ast.expr | None, env: dict[str, Type]) -> Type | None:  # noqa: C901 - one dispatch
        if node is None:
            return None
        if isinstance(node, ast.Name):
            if node.id in env:
                return env[node.id]
            return ("module",) if node.id == "trt" else None
        if isinstance(node, ast.Attribute):
            base = self.typeof(node.value, env)
            if base is None and node.attr == "trt":
                return ("module",)
            return self._member(base, node.attr, node)
        if isinstance(node, ast.Call):
            for arg in node.args:
                self.typeof(arg, env)
            for keyword in node.keywords:
                self.typeof(keyword.value, env)
            func = node.func
            if isinstance(func, ast.Name) and func.id in ("getattr", "hasattr") and len(node.args) >= 2:
                base = self.typeof(node.args[0], env)
                name = node.args[1]
                if base is not None and base[0] in ("module", "class", "instance"):
                    if isinstance(name, ast.Constant) and isinstance(name.value, str):
                        return self._member(base, name.value, node)
                    if self.recording:
                        owner = MODULE if base[0] == "module" else base[1]
                        self.dynamic.append(
                            DynamicSite(owner, ".".join([self.module, *self.function_stack]), self.file, node.lineno)
                        )
                    return ("instance", base[1]) if base[0] == "class" else None
                return None
            called = self.typeof(func, env)
            if isinstance(func, ast.Name) and called is None:
                if self.functions.get(func.id) is not None:
                    return self.functions[func.id]
                if func.id in self.field_types:
                    return ("local", func.id)
            if called is None:
                return None
            if called[0] == "class":
                return ("instance", called[1])
            if called[0] == "method":
                _, member_type, _ = self.api.lookup(called[1], called[2])
                return ("instance", member_type) if member_type in self.api.classes else None
            return None
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.typeof(child, env)
            elif isinstance(child, ast.comprehension):
                self.typeof(child.iter, env)
                for cond in child.ifs:
                    self.typeof(cond, env)
        return None

    # statements
    def _bind(self, target: ast.expr, value_type: Type | None, env: dict[str, Type]) -> None:
        if isinstance(target, ast.Name):
            if value_type is not None:
                env[target.id] = value_type
            else:
                env.pop(target.id, None)
        elif isinstance(target, ast.Attribute):
            base = self.typeof(target.value, env)
            if base is not None and base[0] == "self":
                if value_type is not None:
                    self.self_attrs.setdefault(base[1], {})[target.attr] = value_type
            elif base is not None and base[0] in ("module", "class", "instance"):
                self._member(base, target.attr, target)  # a property written, e.g. builder_optimization_level
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._bind(element, None, env)

    def block(self, statements: Iterable[ast.stmt], env: dict[str, Type]) -> None:  # noqa: C901 - one dispatch
        for stmt in statements:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.function(stmt, env)
            elif isinstance(stmt, ast.ClassDef):
                self.klass(stmt, env)
            elif isinstance(stmt, ast.Assign):
                pairs = [(t, stmt.value) for t in stmt.targets]
                if isinstance(stmt.value, ast.Tuple):  # a, b = x, y: each name gets its own value's type
                    pairs = [
                        pair
                        for t in stmt.targets
                        for pair in (
                            zip(t.elts, stmt.value.elts)
                            if isinstance(t, ast.Tuple) and len(t.elts) == len(stmt.value.elts)
                            else [(t, stmt.value)]
                        )
                    ]
                for target, value in pairs:
                    self._bind(target, self.typeof(value, env), env)
            elif isinstance(stmt, ast.AnnAssign):
                value = self.typeof(stmt.value, env) if stmt.value is not None else None
                self._bind(stmt.target, value or self._annotation_type(stmt.annotation), env)
            elif isinstance(stmt, ast.If) and _is_type_checking(stmt.test):
                continue  # imports for type checkers only
            else:
                for child in ast.iter_child_nodes(stmt):
                    if isinstance(child, ast.expr):
                        self.typeof(child, env)
                    elif isinstance(child, ast.withitem):
                        self.typeof(child.context_expr, env)
                        if child.optional_vars is not None:
                            self._bind(child.optional_vars, None, env)
                    elif isinstance(child, ast.excepthandler):
                        self.block(child.body, env)
                for name in ("body", "orelse", "finalbody"):
                    self.block(getattr(stmt, name, []) or [], env)
                if isinstance(stmt, ast.For):
                    self._bind(stmt.target, None, env)

    def function(self, node: ast.FunctionDef | ast.AsyncFunctionDef, outer: dict[str, Type]) -> None:
        env = dict(outer)
        args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
        for index, arg in enumerate(args):
            annotated = self._annotation_type(arg.annotation)
            if annotated is not None:
                env[arg.arg] = annotated
            elif arg.arg == "trt":
                env[arg.arg] = ("module",)
            elif index == 0 and self.class_stack and arg.arg == "self":
                env[arg.arg] = ("self", self.class_stack[-1])
            else:
                env.pop(arg.arg, None)
        self._annotation_type(node.returns)
        self.function_stack.append(node.name)
        self.block(node.body, env)
        self.function_stack.pop()

    def klass(self, node: ast.ClassDef, outer: dict[str, Type]) -> None:
        for base in node.bases:
            self.typeof(base, outer)
        self.class_stack.append(node.name)
        fields: dict[str, Type] = {}
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                annotated = self._annotation_type(item.annotation)
                if annotated is not None:
                    fields[item.target.id] = annotated
        self.field_types[node.name] = fields
        self.self_attrs.setdefault(node.name, {}).update(fields)
        self.block(node.body, dict(outer))
        self.class_stack.pop()

    def run(self) -> None:
        for node in self.tree.body:
            if isinstance(node, ast.ClassDef):
                self.field_types.setdefault(node.name, {})
        for node in self.tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                returned = _annotation_class(node.returns)
                if _mentions_tensorrt(node.returns):
                    self.functions[node.name] = ("instance", returned)
                elif returned in self.field_types:
                    self.functions[node.name] = ("local", returned)
        # Twice: the first pass learns what `self.x` holds in every method, the second records with it.
        for recording in (False, True):
            self.recording = recording
            self.block(self.tree.body, {})


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _mentions_tensorrt(node: ast.expr | None) -> bool:
    return node is not None and any(
        isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == MODULE
        for sub in ast.walk(node)
    )


def collect_source(api: StubAPI, source: str, file: str = "<source>", module: str = "snippet") -> tuple[
    list[Use], list[DynamicSite]
]:
    """The TensorRT uses and dynamic lookup sites in one module's source."""
    walker = _Walker(api, module, file, ast.parse(source))
    walker.run()
    return walker.uses, walker.dynamic


def collect(api: StubAPI, package: Path) -> tuple[list[Use], list[DynamicSite]]:
    """The TensorRT uses and dynamic lookup sites in every module of ``package``."""
    uses: list[Use] = []
    dynamic: list[DynamicSite] = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package.parent)
        module = ".".join(relative.with_suffix("").parts)
        found, sites = collect_source(api, path.read_text(encoding="utf-8"), str(relative), module)
        uses.extend(found)
        dynamic.extend(sites)
    return uses, dynamic


_LOADERS = ("require", "import_module", "__import__")


def naming_violations(package: Path) -> list[str]:
    """Places that bind the tensorrt module to a name other than ``trt`` (the walk would not follow them)."""
    problems = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        type_checking_imports = {
            id(sub) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
            for sub in ast.walk(node)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and id(node) not in type_checking_imports:
                for alias in node.names:
                    if alias.name == MODULE and (alias.asname or alias.name) != "trt":
                        problems.append(f"{path}:{node.lineno}: `import tensorrt` must be `import tensorrt as trt`")
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                args, func = node.value.args, node.value.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                named = bool(args) and isinstance(args[0], ast.Constant) and args[0].value == MODULE
                loads = (called in _LOADERS and named) or called == "load_tensorrt"
                if loads and not all(isinstance(t, ast.Name) and t.id == "trt" for t in node.targets):
                    problems.append(f"{path}:{node.lineno}: the tensorrt module must be bound to `trt`")
    return problems


# --- the check ------------------------------------------------------------------------------------------------


def read_name_list(path: Path) -> dict[str, str]:
    """``Qualified.name  # why`` lines -> {name: why}; blank lines and ``#`` lines are skipped."""
    names = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        text, _, why = line.partition("#")
        if text.strip():
            names[text.strip()] = why.strip()
    return names


def problems(
    api: StubAPI,
    uses: Iterable[Use],
    removed_in_11: dict[str, str] | set[str],
    allowed_10x_only: dict[str, str],
) -> list[str]:
    """One line per use that the 10.x API lacks or that TensorRT 11 removed (outside ``allowed_10x_only``)."""
    found = []
    for use in uses:
        exists, _, _ = api.lookup(use.owner, use.name)
        if not exists:
            found.append(f"{use.where()}: {use.qualname} is not in the TensorRT {api.version} API")
        if use.qualname in removed_in_11 and use.qualname not in allowed_10x_only:
            found.append(
                f"{use.where()}: {use.qualname} was removed in TensorRT 11; use it only on the 10.x route and list "
                f"it in the allowed 10.x-only names with the reason"
            )
    return sorted(set(found))

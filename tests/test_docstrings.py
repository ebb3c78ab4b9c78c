"""Every public name has a docstring: the API reference is generated from them.

The public names are `rampup.__all__` and each adapter module's `__all__`; an adapter's
`__all__` lists every public class and function the module defines.
"""

import ast
import importlib
import inspect
from types import ModuleType

import pytest

import rampup

# adapter module -> the framework it imports
ADAPTERS = {
    "rampup.adapters.grain": "grain",
    "rampup.adapters.jax": "jax",
    "rampup.adapters.tf": "tensorflow",
    "rampup.adapters.torch": "torch",
}


def adapter(name: str) -> ModuleType:
    pytest.importorskip(ADAPTERS[name])
    return importlib.import_module(name)


def own_doc(obj: object) -> str | None:
    """The docstring written on `obj` itself, not one inherited or generated."""
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__")
        # A dataclass without a docstring gets its signature as one.
        if doc and doc.startswith(f"{obj.__name__}("):
            return None
        return doc
    return getattr(obj, "__doc__", None)


def attribute_doc(module: ModuleType, name: str) -> str | None:
    """The string literal after `name = ...` where it is assigned, following imports."""
    tree = ast.parse(inspect.getsource(module))
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and any(a.name == name for a in node.names):
            assert node.module is not None
            return attribute_doc(importlib.import_module(node.module), name)
    for node, after in zip(tree.body, tree.body[1:], strict=False):
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                return after.value.value if isinstance(after.value.value, str) else None
            return None
    return None


def undocumented(module: ModuleType) -> list[str]:
    missing = []
    for name in module.__all__:
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or callable(obj)):
            if not attribute_doc(module, name):
                missing.append(name)
            continue
        if not own_doc(obj):
            missing.append(name)
        if not inspect.isclass(obj):
            continue
        for member, value in vars(obj).items():
            if member.startswith("_"):
                continue
            if isinstance(value, property):
                value = value.fget
            elif isinstance(value, (classmethod, staticmethod)):
                value = value.__func__
            elif not inspect.isfunction(value):
                continue
            if not own_doc(value):
                missing.append(f"{name}.{member}")
    return missing


def test_every_public_name_of_the_core_has_a_docstring():
    assert undocumented(rampup) == []


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_every_public_name_of_an_adapter_has_a_docstring(name):
    assert undocumented(adapter(name)) == []


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_an_adapter_lists_every_public_class_and_function_it_defines(name):
    module = adapter(name)
    defined = {
        n
        for n, v in vars(module).items()
        if not n.startswith("_")
        and (inspect.isclass(v) or inspect.isfunction(v))
        and v.__module__ == name
    }
    assert defined - set(module.__all__) == set()


@pytest.mark.parametrize("name", ["rampup", *sorted(ADAPTERS)])
def test_every_name_in_all_exists_once(name):
    module = rampup if name == "rampup" else adapter(name)
    assert len(set(module.__all__)) == len(module.__all__)
    assert [n for n in module.__all__ if not hasattr(module, n)] == []

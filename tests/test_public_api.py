"""Every name a jaxnn module promises in ``__all__`` imports (the public API the README and
docs/MOVED.md point to), and every package lists one."""

import importlib
import pkgutil

import pytest

import jaxnn

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(jaxnn.__path__, prefix="jaxnn.")
    if not info.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_every_name_in_all_imports(name):
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        assert not hasattr(importlib.import_module(name), "__path__"), (
            f"package {name} has no __all__"
        )
        return
    assert len(set(exported)) == len(exported), f"{name}.__all__ lists a name twice"
    missing = [attr for attr in exported if not hasattr(module, attr)]
    assert not missing, f"{name}.__all__ names {missing}, which it does not define"


def test_the_walk_sees_the_packages():
    for package in (
        "jaxnn.ops",
        "jaxnn.ops.attention",
        "jaxnn.train",
        "jaxnn.launch",
        "jaxnn.data",
    ):
        assert package in MODULES

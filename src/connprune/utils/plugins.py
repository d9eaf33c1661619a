"""Import the built-in modules that register methods and structural edits."""

from __future__ import annotations

import importlib


def import_builtin(package: str, modules: list[str]) -> None:
    """Import ``package.module`` for each module, in order (each registers itself on import).

    A module not written yet is skipped (only that module: an import error inside it still raises), so that
    methods under development can be listed in the registry before they land.
    """
    for module in modules:
        name = f"{package}.{module}"
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise

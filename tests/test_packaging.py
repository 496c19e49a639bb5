"""The design card's folders are mapped into one namespace; a forgotten sub-package would be
missing from a wheel while every editable-install test still passes. This catches that."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_python_package_folder_is_listed_in_pyproject():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    mapping = tool["package-dir"]
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            name = ".".join([package, *rel.parts]) if rel.parts else package
            assert name in listed, f"{name} ({init.parent}) is missing from [tool.setuptools] packages"


def test_shipped_configs_are_package_data():
    """Every YAML under conf/ is matched by the package-data of the package its folder is
    (conf/ itself, or a data-only sub-package such as nasalloc.conf.profiles, listed in
    `packages` so setuptools neither warns nor drops it)."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for data_file in [*(ROOT / "conf").rglob("*.yaml"), *(ROOT / "execute" / "data").iterdir()]:
        top = "conf" if data_file.is_relative_to(ROOT / "conf") else "execute"
        rel = data_file.parent.relative_to(ROOT / top)
        package = ".".join(["nasalloc", top, *rel.parts])
        assert package in tool["packages"], f"{package} ({data_file.parent}) is not in [tool.setuptools] packages"
        patterns = tool["package-data"].get(package, [])
        assert any(data_file.match(p) for p in patterns), f"{data_file} is matched by no package-data of {package}"


def test_every_top_level_package_folder_is_mapped():
    """A new top-level folder (like validate/) must be mapped into the namespace, or the
    check above never looks inside it."""
    mapped = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values())
    folders = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "benchmarks", "scripts"}
    assert folders <= mapped, f"not in [tool.setuptools] package-dir: {sorted(folders - mapped)}"


# Which sub-packages each one may import: the pipeline's direction (docs/architecture.md).
_ALLOWED = {
    "sim": {"sim"},
    "execute": {"sim", "execute"},
    "calibration": {"sim", "execute", "calibration"},
    "validate": {"sim", "execute", "calibration", "validate"},
}


def test_dependencies_point_one_way():
    import ast

    for folder, allowed in _ALLOWED.items():
        for source in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                for name in names:
                    parts = name.split(".")
                    if parts[0] == "nasalloc" and len(parts) > 1 and parts[1] in _ALLOWED:
                        assert parts[1] in allowed, f"{source.relative_to(ROOT)} imports {name}"

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
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = tool["package-data"]["nasalloc.conf"]
    for yaml_file in (ROOT / "conf").rglob("*.yaml"):
        depth = len(yaml_file.relative_to(ROOT / "conf").parts)
        assert any(p.count("/") + 1 == depth for p in patterns), f"{yaml_file} would not be shipped"

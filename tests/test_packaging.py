"""The installed layout is what the tests exercise: one top-level name, models/ and the CLI inside
the package, no checkout path hack (setup, tests, benchmarks are not importable as normonnx.*)."""
from __future__ import annotations

import importlib
import importlib.metadata
import json

import pytest

import normonnx


def _editable() -> bool:
    text = importlib.metadata.distribution("normonnx").read_text("direct_url.json")
    return bool(text and json.loads(text).get("dir_info", {}).get("editable"))


def test_the_package_holds_models_and_cli():
    import normonnx.cli
    import normonnx.models

    assert callable(normonnx.cli.main) and hasattr(normonnx.models, "native_module")


@pytest.mark.parametrize("name", ["normonnx.setup", "normonnx.tests", "normonnx.benchmarks", "normonnx.conftest"])
def test_nothing_from_the_checkout_leaks_into_the_package(name):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(name)


def test_the_installed_distribution_is_what_runs():
    if _editable():
        pytest.skip("an editable install maps the checkout into the package; CI tests a non-editable install")
    dist = importlib.metadata.distribution("normonnx")
    tops = {f.parts[0] for f in dist.files if not f.parts[0].endswith(".dist-info") and f.parts[0] != ".."}
    assert tops == {"normonnx"}, tops
    assert "site-packages" in normonnx.__file__, f"tests import the checkout, not the install: {normonnx.__file__}"

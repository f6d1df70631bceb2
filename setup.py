"""Installs the top-level cli.py as normonnx.cli (pyproject.toml holds everything else)."""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPy(build_py):
    def run(self):
        super().run()
        # an editable install finds cli.py through normonnx/__init__.py's source-checkout path
        if not self.editable_mode:
            self.copy_file("cli.py", str(Path(self.build_lib, "normonnx", "cli.py")))


setup(cmdclass={"build_py": BuildPy})

"""Build script: compiles the native library when torch is importable.

``pip install --no-build-isolation .`` compiles ahead of time against the
torch already installed. A plain ``pip install .`` builds without torch: the
wheel then carries the C++ sources in lstm_ext/_csrc and the library is
compiled at first import (lstm_ext/_build.py holds the one recipe for both).
"""
import importlib.util
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("lstm_ext_build", os.path.join(HERE, "lstm_ext", "_build.py"))
_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_build)


class BuildPyWithSources(build_py):
    """Ship csrc/ inside the package so it can be compiled at first import."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "lstm_ext", "_csrc")
        os.makedirs(target, exist_ok=True)
        for path in _build.source_files(os.path.join(HERE, "csrc")):
            shutil.copy2(path, target)


try:
    import torch  # noqa: F401
except ImportError:
    torch = None

cmdclass = {"build_py": BuildPyWithSources}
ext_modules = []
if torch is not None and os.environ.get("LSTM_EXT_SKIP_BUILD") != "1":
    ext_modules = [_build.make_extension(relative_to=HERE)]
    cmdclass["build_ext"] = _build.build_ext_class()

setup(ext_modules=ext_modules, cmdclass=cmdclass)

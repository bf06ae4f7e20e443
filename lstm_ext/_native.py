"""Loads the native library that registers ``torch.ops.lstm_ext.*``.

A library built ahead of time sits next to this file as ``_C``; without one
(or when it was built for another torch) it is compiled once into a cache by
``_build.build_cached`` and loaded from there.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

import torch  # noqa: F401  (the library links against torch's; load it first)


def _load_from(path: str) -> ModuleType:
    loader = importlib.machinery.ExtensionFileLoader("lstm_ext._C", path)
    spec = importlib.util.spec_from_file_location("lstm_ext._C", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules["lstm_ext._C"] = module
    return module


def load() -> ModuleType:
    from lstm_ext import _build

    prebuilt = _build.prebuilt_library()
    if prebuilt:
        try:
            return _load_from(prebuilt)
        except ImportError as error:
            warnings.warn(f"lstm_ext: the prebuilt native library {prebuilt} does not load ({error}); "
                          "compiling one for this torch instead", RuntimeWarning, stacklevel=3)
    return _load_from(_build.build_cached())


native = load()

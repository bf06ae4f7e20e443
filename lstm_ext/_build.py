"""How lstm_ext's native library is built.

One definition serves both ways of building it:

* ahead of time, by ``setup.py`` when torch is importable during the build
  (``pip install --no-build-isolation .``);
* at first import, when no prebuilt library sits next to the package (a plain
  ``pip install .`` builds in an isolated environment without torch, so it can
  only ship the sources). The library is then compiled once into a cache
  directory keyed by the sources and the torch build, and reused.

This file must import without torch: setup.py loads it before torch may exist.
It runs as a script for the build at first import (see ``build_cached``).
"""
from __future__ import annotations

import concurrent.futures
import glob
import hashlib
import os
import platform
import subprocess
import sys
import sysconfig

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

COMMON_SOURCES = ["registration.cpp", "lstm_ops.cpp", "lstm_layers.cpp", "lstm_autograd.cpp", "layernorm_lstm_ops.cpp",
                  "lstm_cpu_dispatch.cpp", "lstm_cpu_recurrence.cpp", "buffer_pool.cpp",
                  "sequence_packing.cpp"]
CPU_KERNEL_SOURCE = "lstm_cpu_kernels.cpp"
CUDA_SOURCES = ["lstm_cuda_kernels.cu"]
SOURCE_PATTERNS = ("*.h", "*.cpp", "*.cu", "*.cuh")

# GPUs to compile for when none is visible to detect (TORCH_CUDA_ARCH_LIST wins).
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def source_dir() -> str:
    """csrc/ of a checkout, or the copy that an installed package carries."""
    for candidate in (os.path.join(PACKAGE_DIR, "_csrc"), os.path.join(os.path.dirname(PACKAGE_DIR), "csrc")):
        if os.path.isfile(os.path.join(candidate, "registration.cpp")):
            return candidate
    raise FileNotFoundError(f"lstm_ext: C++ sources not found next to {PACKAGE_DIR} (expected _csrc/ or ../csrc/)")


def source_files(directory: str | None = None) -> list[str]:
    directory = directory or source_dir()
    found = []
    for pattern in SOURCE_PATTERNS:
        found += glob.glob(os.path.join(directory, pattern))
    return sorted(found)


def cpu_capabilities() -> list[tuple[str, list[str]]]:
    """(name, compiler flags) of each CPU kernel variant, as ATen compiles its own."""
    variants = [("DEFAULT", [])]
    if platform.machine().lower() in ("x86_64", "amd64"):
        variants.append(("AVX2", ["-mavx2", "-mfma", "-mf16c"]))
        variants.append(("AVX512", ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"]))
    return variants


def _usable_toolkit(home: str | None) -> bool:
    return bool(home) and os.path.isfile(os.path.join(home, "bin", "nvcc")) and \
        os.path.isfile(os.path.join(home, "include", "cuda_runtime.h"))


def locate_cuda_home() -> str | None:
    """A CUDA toolkit with nvcc and its headers, or None.

    torch guesses CUDA_HOME from the nvcc on PATH; when that nvcc is a wrapper
    script (here /usr/local/bin/nvcc), the guess is /usr/local, which has no
    CUDA headers or libraries. Then the versioned toolkits are tried, and the
    one found is handed to torch through CUDA_HOME.
    """
    import torch.utils.cpp_extension as cpp_extension

    explicit = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    candidates = [explicit] if explicit else [cpp_extension.CUDA_HOME, "/usr/local/cuda"]
    if not explicit:
        candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for home in candidates:
        if _usable_toolkit(home):
            os.environ["CUDA_HOME"] = home
            cpp_extension.CUDA_HOME = home  # read at call time by torch's include and library paths
            return home
    return None


def cuda_build_wanted() -> bool:
    """Build CUDA kernels when torch is a CUDA build and a toolkit is found.

    Decided by torch.version.cuda and CUDA_HOME, not torch.cuda.is_available():
    a machine without a GPU (CI) still compiles the CUDA code.
    LSTM_EXT_CUDA=0 forces a CPU-only build, LSTM_EXT_CUDA=1 insists on CUDA.
    """
    import torch

    choice = os.environ.get("LSTM_EXT_CUDA", "")
    if choice == "0":
        return False
    cuda_home = locate_cuda_home() if torch.version.cuda is not None else None
    possible = cuda_home is not None
    if choice == "1" and not possible:
        raise RuntimeError(
            "lstm_ext: LSTM_EXT_CUDA=1 but torch is not a CUDA build "
            f"(torch.version.cuda={torch.version.cuda}) or no CUDA toolkit with nvcc and headers was found "
            f"(CUDA_HOME={os.environ.get('CUDA_HOME')})"
        )
    return possible


def _cuda_extra_includes() -> list[str]:
    """Headers that a bare toolkit may lack (cublas_v2.h, cusparse.h, which
    ATen/cuda/CUDAContext.h includes) from the nvidia pip packages that a CUDA
    build of torch installs. Passed with -isystem so the toolkit's own headers
    still come first."""
    from torch.utils.cpp_extension import CUDA_HOME

    if os.path.isfile(os.path.join(CUDA_HOME, "include", "cublas_v2.h")):
        return []
    site = sysconfig.get_paths()["purelib"]
    dirs = sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "include")))
    dirs += sorted(glob.glob(os.path.join(site, "nvidia", "*", "include")))
    wanted = [d for d in dirs if any(os.path.isfile(os.path.join(d, h)) for h in ("cublas_v2.h", "cusparse.h"))]
    return list(dict.fromkeys(wanted))


def make_extension(name: str = "lstm_ext._C", relative_to: str | None = None):
    """The setuptools Extension for the native library (CPU, or CPU + CUDA).

    relative_to: setup.py's folder; setuptools wants sources relative to it.
    """
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    src = source_dir()

    def source(name):
        path = os.path.join(src, name)
        return os.path.relpath(path, relative_to) if relative_to else path

    sources = [source(f) for f in COMMON_SOURCES]
    macros = [(f"LSTM_EXT_HAVE_{cap}", None) for cap, _ in cpu_capabilities() if cap != "DEFAULT"]
    cxx = ["-O3", "-fopenmp"]  # -fopenmp: at::parallel_for is serial without it
    link = ["-fopenmp"]
    if not cuda_build_wanted():
        return CppExtension(name, sources, define_macros=macros, include_dirs=[src],
                            extra_compile_args={"cxx": cxx}, extra_link_args=link)

    import torch

    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # With no GPU to detect, torch's own arch detection fails; pick Ampere and Hopper.
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    extra = [flag for d in _cuda_extra_includes() for flag in ("-isystem", d)]
    macros.append(("LSTM_EXT_WITH_CUDA", None))
    return CUDAExtension(
        name,
        sources + [source(f) for f in CUDA_SOURCES],
        define_macros=macros,
        include_dirs=[src],
        extra_compile_args={"cxx": cxx + extra, "nvcc": ["-O3", "-DLSTM_EXT_WITH_CUDA"] + extra},
        extra_link_args=link,
    )


def build_ext_class():
    """torch's BuildExtension, plus one compile of the CPU kernels per capability."""
    from torch.utils.cpp_extension import BuildExtension

    class BuildLstmExt(BuildExtension):
        def build_extension(self, ext):
            args = ext.extra_compile_args
            cflags = list(args["cxx"] if isinstance(args, dict) else args)
            kernel = os.path.join(source_dir(), CPU_KERNEL_SOURCE)

            def compile_variant(variant):
                cap, flags = variant
                macros = [("CPU_CAPABILITY", cap)] + ([] if cap == "DEFAULT" else [(f"CPU_CAPABILITY_{cap}", None)])
                return self.compiler.compile(
                    [kernel], output_dir=os.path.join(self.build_temp, "cpu_" + cap.lower()),
                    macros=macros, include_dirs=ext.include_dirs, extra_postargs=cflags + flags,
                    depends=source_files())

            # Each variant writes its own ninja file in its own folder: safe in parallel.
            with concurrent.futures.ThreadPoolExecutor() as pool:
                objects = [o for objs in pool.map(compile_variant, cpu_capabilities()) for o in objs]
            ext.extra_objects = list(ext.extra_objects or []) + objects
            super().build_extension(ext)

    return BuildLstmExt


def cache_key() -> str:
    """Changes whenever the sources, this recipe, torch or Python change."""
    import torch

    digest = hashlib.sha256()
    for path in source_files() + [os.path.abspath(__file__)]:
        digest.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            digest.update(f.read())
    digest.update(f"{torch.__version__}|{torch.version.cuda}|{sys.version}|{os.environ.get('LSTM_EXT_CUDA', '')}".encode())
    return digest.hexdigest()[:16]


def cache_root() -> str:
    if os.environ.get("LSTM_EXT_BUILD_DIR"):
        return os.environ["LSTM_EXT_BUILD_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lstm_ext")


def _built_library(directory: str) -> str | None:
    found = glob.glob(os.path.join(directory, "_C*" + sysconfig.get_config_var("EXT_SUFFIX")))
    return found[0] if found else None


def prebuilt_library() -> str | None:
    """The library built ahead of time next to the package, if any."""
    return _built_library(PACKAGE_DIR)


def build_cached(verbose: bool = False) -> str:
    """Path of the native library for this torch, compiling it on first use."""
    from torch.utils.file_baton import FileBaton

    out = os.path.join(cache_root(), cache_key())
    library = _built_library(out)
    if library:
        return library
    os.makedirs(out, exist_ok=True)
    baton = FileBaton(os.path.join(out, "lock"))
    if baton.try_acquire():
        try:
            print(f"lstm_ext: compiling the native library into {out} (first import for this torch; "
                  "a minute or two)...", file=sys.stderr, flush=True)
            cmd = [sys.executable, os.path.abspath(__file__), out]
            result = subprocess.run(cmd, capture_output=not verbose, text=True)
            if result.returncode != 0:
                log = (result.stdout or "") + (result.stderr or "")
                raise RuntimeError(f"lstm_ext: building the native library failed:\n{log[-20000:]}")
        finally:
            baton.release()
    else:
        baton.wait()  # another process is building it
    library = _built_library(out)
    if not library:
        raise RuntimeError(f"lstm_ext: the build in {out} produced no library")
    return library


def _build_into(out: str) -> None:
    from setuptools import setup

    setup(
        name="lstm_ext_native",
        ext_modules=[make_extension("_C")],
        cmdclass={"build_ext": build_ext_class()},
        script_args=["build_ext", "--build-lib", out, "--build-temp", os.path.join(out, "build")],
    )


if __name__ == "__main__":
    _build_into(sys.argv[1])

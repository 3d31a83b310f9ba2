"""Build script: the optional CUDA extension duality_kernels._C (metadata lives in pyproject.toml).

The extension is built when torch is a CUDA build and nvcc is found; a visible GPU is not needed
(docs/design.md convention 9). Without them the package installs as pure Python + Triton and says why in
one line on stderr; at runtime backend="cuda" then raises with the rebuild command.

Environment knobs:
  DUALITY_KERNELS_BUILD_CUDA  unset/"auto": build when possible; "0": never; "1": always (fail
                              loudly when it cannot be built).
  TORCH_CUDA_ARCH_LIST        target GPUs, e.g. "8.0;9.0+PTX". Unset: the GPUs visible at build time
                              (torch's default), or with none visible every family we support,
                              DEFAULT_ARCHS (sm_80 to sm_120 cubins + PTX of the newest), less
                              those the installed nvcc cannot target.
  MAX_JOBS                    parallel compile jobs (read by torch's ninja build).
  CUDA_HOME / CUDA_PATH       CUDA toolkit root; otherwise derived from `nvcc --dryrun`, which
                              also sees through wrapper scripts named nvcc on PATH.

Typical (re)build: `pip install --no-build-isolation -e .` (torch must already be installed).
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
BUILD_ENV = "DUALITY_KERNELS_BUILD_CUDA"
# Built when no GPU is visible and TORCH_CUDA_ARCH_LIST is unset: A100, RTX 30xx/A10, RTX 40xx/L40S,
# H100/H200, B200, RTX 50xx; a cubin runs on later minors of its major (sm_86 on sm_87/89, sm_100 on
# sm_103), and the newest also carries PTX so that a GPU newer than all of them can JIT it.
DEFAULT_ARCHS = ("8.0", "8.6", "8.9", "9.0", "10.0", "12.0")


def _build_mode():
    value = os.environ.get(BUILD_ENV, "").strip().lower()
    if value in ("", "auto"):
        return "auto"
    if value in ("0", "1"):
        return value
    raise SystemExit(f"duality_kernels: {BUILD_ENV}={os.environ[BUILD_ENV]!r} is not one of 0, 1, auto")


def _nvcc_on_path():
    return shutil.which("nvcc")


def _cuda_home_from_nvcc(nvcc):
    """The toolkit root nvcc itself uses: the TOP= line of `nvcc --dryrun` (a wrapper script named
    nvcc elsewhere on PATH makes torch's own guess, dirname(dirname(nvcc)), wrong)."""
    try:
        proc = subprocess.run(
            [nvcc, "--dryrun", "-c", "duality_kernels_probe.cu"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
            cwd=tempfile.gettempdir(),  # --dryrun writes nothing; the probe file need not exist
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ TOP=(.+?)\s*$", proc.stdout, re.MULTILINE)
    if match:
        return os.path.realpath(match.group(1))
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def _find_cuda_home():
    """(cuda_home, None) or (None, reason)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home:
            if os.path.isfile(os.path.join(home, "bin", "nvcc")):
                return home, None
            return None, f"{var}={home} has no bin/nvcc"
    nvcc = _nvcc_on_path()
    if nvcc is None:
        if os.path.isfile("/usr/local/cuda/bin/nvcc"):
            nvcc = "/usr/local/cuda/bin/nvcc"
        else:
            return None, "nvcc was not found on PATH and CUDA_HOME is not set"
    home = _cuda_home_from_nvcc(nvcc)
    if home is None or not os.path.isfile(os.path.join(home, "bin", "nvcc")):
        return None, f"could not locate the CUDA toolkit behind {nvcc} (set CUDA_HOME)"
    return home, None


def _nvcc(cuda_home, flag):
    """nvcc's output for ``flag`` (stderr ignored), or None when it cannot run."""
    try:
        return subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), flag], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _nvcc_release(cuda_home):
    out = _nvcc(cuda_home, "--version")
    if out is None:
        return None
    match = re.search(r"release (\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _cuda_prerequisites():
    """(torch, cuda_home, None) when the extension can be built, else (None, None, reason)."""
    try:
        import torch
    except Exception as exc:  # not installed, or broken
        return None, None, f"torch is not importable: {type(exc).__name__}: {exc}"
    if torch.version.cuda is None:
        return None, None, f"torch {torch.__version__} is not a CUDA build"
    cuda_home, reason = _find_cuda_home()
    if cuda_home is None:
        return None, None, reason
    if not os.path.isfile(os.path.join(cuda_home, "include", "cuda_runtime.h")):
        return None, None, f"the CUDA toolkit at {cuda_home} has no include/cuda_runtime.h"
    release = _nvcc_release(cuda_home)
    torch_major = int(torch.version.cuda.split(".")[0])
    if release is not None and release[0] != torch_major:
        # torch's BuildExtension refuses a CUDA major-version mismatch: say so up front.
        return None, None, (
            f"nvcc {release[0]}.{release[1]} at {cuda_home} does not match torch "
            f"{torch.__version__} (CUDA {torch.version.cuda})"
        )
    return torch, cuda_home, None


def _nvcc_targets(cuda_home):
    """(cubin targets, PTX targets) the installed nvcc accepts, as {"80", "90", ...}; None when nvcc
    cannot list them (older than CUDA 11.1): then nothing is dropped and nvcc has the last word."""
    found = []
    for flag, prefix in (("--list-gpu-code", "sm_"), ("--list-gpu-arch", "compute_")):
        out = _nvcc(cuda_home, flag)
        if out is None:
            return None
        codes = set(re.findall(r"^" + prefix + r"(\d+)\s*$", out, re.MULTILINE))
        if not codes:
            return None
        found.append(codes)
    return found[0], found[1]


def default_arch_list(targets):
    """TORCH_CUDA_ARCH_LIST for a build with no GPU visible: DEFAULT_ARCHS that nvcc can target
    (``targets`` as _nvcc_targets returns it), PTX on the newest kept; (list, dropped archs)."""
    if targets is None:
        kept = list(DEFAULT_ARCHS)
    else:
        sm, ptx = targets
        kept = [a for a in DEFAULT_ARCHS if a.replace(".", "") in sm]
    dropped = [a for a in DEFAULT_ARCHS if a not in kept]
    if not kept:
        return "", dropped
    newest = kept[-1]
    if targets is None or newest.replace(".", "") in targets[1]:
        kept[-1] = newest + "+PTX"
    return ";".join(kept), dropped


def _choose_arch_list(torch, cuda_home):
    """Set TORCH_CUDA_ARCH_LIST when unset and no GPU is visible (torch's own default needs one);
    returns the reason the extension cannot be built, or None."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip():
        return None
    try:
        visible = torch.cuda.device_count()
    except Exception:  # a driver that cannot be queried is the same as no GPU for this choice
        visible = 0
    if visible:
        return None
    arch_list, dropped = default_arch_list(_nvcc_targets(cuda_home))
    if dropped:
        print(
            f"duality_kernels: nvcc at {cuda_home} cannot target sm_"
            + ", sm_".join(a.replace(".", "") for a in dropped)
            + "; building without them (a newer CUDA toolkit adds them)",
            file=sys.stderr,
        )
    if not arch_list:
        return f"nvcc at {cuda_home} targets none of sm_80..sm_120"
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    return None


def _say_skipped(reason):
    print(
        f"duality_kernels: building without the CUDA extension ({reason}); "
        "backend='cuda' will be unavailable",
        file=sys.stderr,
    )


def _extensions_and_cmdclass():
    mode = _build_mode()
    if mode == "0":
        _say_skipped(f"{BUILD_ENV}=0")
        return [], {}
    torch, cuda_home, reason = _cuda_prerequisites()
    if reason is not None:
        if mode == "1":
            raise SystemExit(f"duality_kernels: {BUILD_ENV}=1 but the CUDA extension cannot be built: {reason}")
        _say_skipped(reason)
        return [], {}

    reason = _choose_arch_list(torch, cuda_home)
    if reason is not None:
        if mode == "1":
            raise SystemExit(f"duality_kernels: {BUILD_ENV}=1 but the CUDA extension cannot be built: {reason}")
        _say_skipped(reason)
        return [], {}
    # torch.utils.cpp_extension reads CUDA_HOME when it is first imported.
    os.environ["CUDA_HOME"] = cuda_home
    from torch.utils import cpp_extension

    cpp_extension.CUDA_HOME = cuda_home  # in case it was imported before we set the variable

    class BuildExtension(cpp_extension.BuildExtension):
        def build_extensions(self):
            try:
                super().build_extensions()
            except BaseException:
                print(
                    "duality_kernels: compiling the CUDA extension failed (see above). "
                    f"Set {BUILD_ENV}=0 to install without it (backend='cuda' unavailable).",
                    file=sys.stderr,
                )
                raise

    # Relative source paths: setuptools wants them relative to the project root (pip's cwd).
    def rel(*parts):
        return os.path.relpath(os.path.join(ROOT, *parts))

    ext = cpp_extension.CUDAExtension(
        name="duality_kernels._C",
        sources=[
            *[rel("csrc", "bindings", f) for f in sorted(os.listdir(os.path.join(ROOT, "csrc", "bindings")))
              if f.endswith(".cpp")],
            *[rel("csrc", "kernels", f) for f in sorted(os.listdir(os.path.join(ROOT, "csrc", "kernels")))
              if f.endswith(".cu")],
        ],
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={
            "cxx": ["-O3"],
            # IEEE results: no --use_fast_math. -lineinfo for profilers and compute-sanitizer.
            "nvcc": ["-O3", "-lineinfo"],
        },
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


if __name__ == "__main__":  # pip and build run it so; tests/test_packaging.py imports the helpers
    ext_modules, cmdclass = _extensions_and_cmdclass()
    setup(ext_modules=ext_modules, cmdclass=cmdclass)

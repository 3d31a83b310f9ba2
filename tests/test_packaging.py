"""Packaging: the README's install and test commands are the ones CI runs (.ci/run), its "Supported"
table states pyproject's floors, the default CUDA architectures, the sdist is the tracked tree, and
a non-editable install from that sdist imports (and builds ``_C`` where nvcc and a CUDA torch are)."""

import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch

import duality_kernels as dk

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _bash_blocks(text):
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def _section(text, title):
    match = re.search(r"^## " + re.escape(title) + r"\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def test_ci_runs_readme_install_and_test_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    blocks = _bash_blocks(readme)
    install = next(b for b in blocks if "pip install" in b)
    test = next(b for b in blocks if "pytest" in b)
    assert install in ci, f"README install command not in .ci/run: {install!r}"
    assert test in ci, f"README test command not in .ci/run: {test!r}"


def test_public_names():
    for name in dk.__all__:
        assert hasattr(dk, name), name
    for name in ("vicreg_loss", "vicreg_exp_loss", "vicreg_ctr_loss", "barlow_twins_loss", "ntxent_loss",
                 "dcl_loss", "infonce_loss", "spectral_contrastive_loss", "normalized_gram", "covariance",
                 "cross_correlation", "sample_contrastive_criterion", "dimension_contrastive_criterion",
                 "duality_terms", "VICRegLoss", "BarlowTwinsLoss", "NTXentLoss", "DCLLoss"):
        assert callable(getattr(dk, name)), name


# ---------------------------------------------------------------------------------------------
# Versions: pyproject's floors are the ones .ci/run's second environment installs and the README states


def _pyproject():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _floor(requirements, name):
    found = [r for r in requirements if re.match(re.escape(name) + r"\s*(>=|\[|;|$)", r)]
    assert len(found) == 1, (name, requirements)
    match = re.match(re.escape(name) + r"\s*>=\s*([0-9.]+)", found[0])
    assert match, f"{found[0]!r} has no >= floor"
    return match.group(1)


def test_supported_table_states_pyproject_floors():
    project = _pyproject()["project"]
    deps = project["dependencies"]
    python_floor = re.fullmatch(r">=\s*([0-9.]+)", project["requires-python"]).group(1)
    supported = _section((ROOT / "README.md").read_text(), "Supported")
    rows = dict(re.findall(r"^\| (\w[\w ]*?) \| (.+?) \|", supported, flags=re.M))

    def stated(row):
        match = re.match(r"≥ ([0-9.]*[0-9])(?![0-9.])", rows.get(row, ""))
        assert match, f"README 'Supported' row {row!r} does not start with a floor: {rows.get(row)!r}"
        return match.group(1)

    assert stated("torch") == _floor(deps, "torch")
    assert stated("triton") == _floor(deps, "triton")
    assert stated("Python") == python_floor
    # The build needs the same torch as the run (its _C links against it).
    assert _floor(_pyproject()["build-system"]["requires"], "torch") == _floor(deps, "torch")
    # CI's second environment reads the floors from pyproject.toml and runs that Python.
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pyproject.toml" in ci and "requires-python" in ci


# ---------------------------------------------------------------------------------------------
# CUDA architectures of a build with TORCH_CUDA_ARCH_LIST unset (setup.py)


def _setup_py():
    spec = importlib.util.spec_from_file_location("duality_kernels_setup_py", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines the helpers; setup() runs only as __main__
    return module


# What `nvcc --list-gpu-code` / `--list-gpu-arch` print, in the sets _nvcc_targets makes of them.
NVCC_13_0 = ({"75", "80", "86", "87", "88", "89", "90", "100", "103", "110", "120", "121"},) * 2
NVCC_12_4 = ({"50", "52", "53", "60", "61", "62", "70", "72", "75", "80", "86", "87", "89", "90"},) * 2


def test_default_arch_list():
    setup_py = _setup_py()
    every = "8.0;8.6;8.9;9.0;10.0;12.0+PTX"
    assert setup_py.default_arch_list(NVCC_13_0) == (every, [])
    assert setup_py.default_arch_list(None) == (every, [])  # nvcc cannot say: nvcc decides
    assert setup_py.default_arch_list(NVCC_12_4) == ("8.0;8.6;8.9;9.0+PTX", ["10.0", "12.0"])
    no_ptx = (NVCC_13_0[0], NVCC_13_0[1] - {"120"})
    assert setup_py.default_arch_list(no_ptx) == ("8.0;8.6;8.9;9.0;10.0;12.0", [])
    assert setup_py.default_arch_list(({"70"}, {"70"})) == ("", list(setup_py.DEFAULT_ARCHS))


class _FakeTorch:
    def __init__(self, gpus):
        self.cuda = type("cuda", (), {"device_count": staticmethod(lambda: gpus)})


def test_arch_choice(monkeypatch, capsys):
    setup_py = _setup_py()
    monkeypatch.setattr(setup_py, "_nvcc_targets", lambda home: NVCC_12_4)
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    # A visible GPU: torch's own default (that GPU, with PTX) decides.
    assert setup_py._choose_arch_list(_FakeTorch(1), "/cuda") is None
    assert "TORCH_CUDA_ARCH_LIST" not in os.environ
    assert capsys.readouterr().err == ""
    # None visible: every default nvcc can target, one line for those it cannot.
    assert setup_py._choose_arch_list(_FakeTorch(0), "/cuda") is None
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "8.0;8.6;8.9;9.0+PTX"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sm_100, sm_120" in err, err
    # The user's list is never touched.
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6")
    assert setup_py._choose_arch_list(_FakeTorch(0), "/cuda") is None
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "8.6"
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    monkeypatch.setattr(setup_py, "_nvcc_targets", lambda home: ({"70"}, {"70"}))
    assert "none of" in setup_py._choose_arch_list(_FakeTorch(0), "/cuda")


# ---------------------------------------------------------------------------------------------
# The sdist, and a non-editable install from it


def _tracked_files():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (e.g. an unpacked sdist): nothing to compare the sdist with")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, stdout=subprocess.PIPE, check=True).stdout
    # Deleted but not yet committed files are not in the tree the sdist is built from.
    return sorted(p for p in out.decode().split("\0") if p and (ROOT / p).is_file())


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """The sdist built (PEP 517, as `python -m build --sdist` does) from a copy of the tracked files
    as they are in the working tree, so that untracked build outputs cannot leak into it."""
    tracked = _tracked_files()
    src = tmp_path_factory.mktemp("src")
    for rel in tracked:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    dist = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, DUALITY_KERNELS_BUILD_CUDA="0")  # an sdist compiles nothing
    code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(dist)!r}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=src, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    name = proc.stdout.strip().splitlines()[-1]
    return tracked, dist / name


def test_sdist_is_the_tracked_tree(sdist):
    tracked, path = sdist
    with tarfile.open(path) as tar:
        names = [m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()]
    generated = {"PKG-INFO", "setup.cfg"}
    shipped = sorted(n for n in names if n not in generated and ".egg-info/" not in n)
    expected = sorted(p for p in tracked if p != ".gitignore")
    assert set(expected) - set(shipped) == set(), "tracked but not in the sdist"
    assert set(shipped) - set(expected) == set(), "in the sdist but not tracked"
    assert len(shipped) == len(set(shipped))
    for needed in ("csrc/kernels/api.h", "csrc/kernels/common.cuh", "csrc/kernels/gram_ops.h",
                   "csrc/sim/cuda_sim.h", "csrc/sim/sim_kernels.cpp", "duality_kernels/testing/csim.py"):
        assert needed in shipped, needed


def _cuda_build_possible(setup_py):
    return torch.version.cuda is not None and setup_py._find_cuda_home()[0] is not None


def _cuobjdump(cuda_home):
    """The toolkit's cuobjdump, else the one triton ships (a partial toolkit may lack it)."""
    for candidate in (os.path.join(cuda_home, "bin", "cuobjdump"), shutil.which("cuobjdump")):
        if candidate and os.path.isfile(candidate):
            return candidate
    try:
        import triton
    except Exception:
        return None
    bundled = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(bundled) if bundled.is_file() else None


_PROBE = """
import sys, torch
import duality_kernels as dk
from duality_kernels.ops import cuda as cuda_ops
g = torch.Generator().manual_seed(7)
z1, z2 = torch.randn(16, 24, generator=g, dtype=torch.float64), torch.randn(16, 24, generator=g, dtype=torch.float64)
print(dk.__file__)
print(cuda_ops.is_available())
print(repr(dk.vicreg_loss(z1, z2, backend="torch").item()))
"""


@pytest.mark.slow
def test_sdist_installs_and_imports(sdist, tmp_path):
    """pip installs the sdist (not editable) into a folder of its own; it imports from there, and,
    where a CUDA torch and nvcc are, the default build put every default architecture in _C."""
    _, path = sdist
    setup_py = _setup_py()
    build_cuda = _cuda_build_possible(setup_py)
    target = tmp_path / "site"
    env = dict(os.environ, DUALITY_KERNELS_BUILD_CUDA="1" if build_cuda else "0")
    env.pop("TORCH_CUDA_ARCH_LIST", None)  # the default choice is what this test checks
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
         "--target", str(target), str(path)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:]

    env = dict(os.environ, PYTHONPATH=str(target))
    probe = subprocess.run([sys.executable, "-c", _PROBE], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=300)
    assert probe.returncode == 0, probe.stdout[-4000:]
    where, available, loss = probe.stdout.strip().splitlines()[-3:]
    assert pathlib.Path(where).resolve().is_relative_to(target.resolve()), where
    assert available == str(build_cuda), probe.stdout
    g = torch.Generator().manual_seed(7)
    z1, z2 = torch.randn(16, 24, generator=g, dtype=torch.float64), torch.randn(16, 24, generator=g,
                                                                                dtype=torch.float64)
    assert float(loss) == dk.vicreg_loss(z1, z2, backend="torch").item()

    if not build_cuda:
        return
    ext = list((target / "duality_kernels").glob("_C*.so"))
    assert len(ext) == 1, ext
    if torch.cuda.device_count():
        return  # torch's default (the visible GPUs) was built: checked by the GPU tests
    cuobjdump = _cuobjdump(setup_py._find_cuda_home()[0])
    if cuobjdump is None:
        pytest.skip("no cuobjdump (CUDA toolkit or triton's) to list _C's architectures")
    listing = subprocess.run([cuobjdump, "--list-elf", "--list-ptx", str(ext[0])], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=300).stdout
    cubins = set(re.findall(r"\.sm_(\d+)\.cubin", listing))
    ptx = set(re.findall(r"\.sm_(\d+)\.ptx", listing))
    arch_list, _ = setup_py.default_arch_list(setup_py._nvcc_targets(setup_py._find_cuda_home()[0]))
    expected = [a.replace("+PTX", "").replace(".", "") for a in arch_list.split(";")]
    assert cubins == set(expected), listing
    assert ptx == ({expected[-1]} if arch_list.endswith("+PTX") else set()), listing

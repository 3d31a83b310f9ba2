"""The README's install and test commands are the ones CI runs (.ci/run), and the package's
public names exist."""

import pathlib
import re

import duality_kernels as dk

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _bash_blocks(text):
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


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

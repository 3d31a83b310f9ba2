"""What every Triton op file shares: availability, device rules, precision and block choices,
TF32 rounding (``tf32_rounding`` / ``round_tf32``) and the launch-configuration record (``Tiles``).

Triton is imported lazily by the op files (``import duality_kernels`` never needs it). Kernels run
on CUDA tensors, or on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1`` set before
``triton`` is first imported), which is how the default test suite checks them on a machine
without a GPU (docs/design.md convention 10).
"""

from __future__ import annotations

import contextlib
import os
from typing import NamedTuple, Optional

import torch

from ..._errors import BackendUnavailableError
from ..._numerics import acc_dtype  # noqa: F401 (the Triton modules' name for it)

try:
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    _IMPORT_ERROR: Optional[BaseException] = None
except Exception as _exc:  # ImportError, or a broken install
    triton = None
    tl = None
    _IMPORT_ERROR = _exc


def _interpret_env() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# triton.jit makes an interpreted function when TRITON_INTERPRET=1 at decoration, i.e. when this
# package's kernel modules are imported: read once then (the launch plans ask on every call, and an
# environment read costs ~1 µs of host time each)
_INTERPRETING = _interpret_env()


def interpreting() -> bool:
    """True under the Triton interpreter (kernels then run on CPU tensors)."""
    return _INTERPRETING


def is_available() -> bool:
    return triton is not None


def unavailable_reason() -> str:
    if triton is None:
        return (f"triton is not importable ({type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR}); "
                "`pip install triton`, or use backend='torch'")
    return ""


def device_problem(z: torch.Tensor) -> str:
    """Why the Triton kernels cannot run on ``z``'s device ("" when they can)."""
    if z.device.type == "cuda":
        return ""
    if z.device.type == "cpu" and _interpret_env():  # read now: a caller may have changed it since import
        return ""
    return (f"backend='triton' needs CUDA tensors, got tensors on {z.device} "
            "(CPU tensors run only under the Triton interpreter, TRITON_INTERPRET=1)")


def device_rule(z: torch.Tensor) -> None:
    """Raises unless the Triton kernels can run on ``z`` here (the entry points' device check)."""
    if triton is None:
        raise BackendUnavailableError(f"backend='triton' is unavailable: {unavailable_reason()}")
    why = device_problem(z)
    if why:
        raise ValueError(why)


def device_guard(z: torch.Tensor):
    """Triton launches on the current CUDA device: make it z's (multi-GPU processes)."""
    return torch.cuda.device(z.device) if z.device.type == "cuda" else contextlib.nullcontext()


# Launch-table families (docs/triton_gram.md, docs/triton_lse.md): each family's tables fit the
# smallest per-block shared memory among its members (sm_86/89 and sm_120: 99 KB).
AMPERE, HOPPER, BLACKWELL = "ampere/ada", "hopper", "blackwell"

# The compute capability the tables are chosen for when set (major * 10 + minor): the ahead-of-time
# compile (duality_kernels/testing/triton_aot.py) sets its target's here, as its tensors are on "meta".
ARCH_OVERRIDE: Optional[int] = None
_CAPABILITY: dict = {}


def device_arch(z: Optional[torch.Tensor] = None) -> int:
    """The compute capability (e.g. 90) whose launch tables ``z``'s launches use: ARCH_OVERRIDE when
    set, else that of ``z``'s CUDA device (cached per device), else 90 (the interpreter and CPU or
    meta tensors take the Hopper tables, so their launches do not depend on the machine)."""
    if ARCH_OVERRIDE is not None:
        return ARCH_OVERRIDE
    if z is None or z.device.type != "cuda":
        return 90
    idx = z.device.index if z.device.index is not None else torch.cuda.current_device()
    cap = _CAPABILITY.get(idx)
    if cap is None:
        major, minor = torch.cuda.get_device_capability(idx)
        cap = _CAPABILITY[idx] = 10 * major + minor
    return cap


def arch_family(z: Optional[torch.Tensor] = None) -> str:
    """The launch-table family of ``z``'s device (see device_arch): sm_8x "ampere/ada", sm_9x
    "hopper", sm_100 and later "blackwell" (sm_120 included: its tables fit 99 KB per block)."""
    arch = device_arch(z)
    if arch < 90:
        return AMPERE
    return HOPPER if arch < 100 else BLACKWELL


def input_precision(dtype: torch.dtype) -> str:
    """The ``tl.dot`` input precision that honors torch's float32 matmul setting (docs/design.md convention 4).

    float32 under "highest" is IEEE; under "high"/"medium" TF32 is allowed, as for torch matmuls.
    bf16/fp16 use tensor cores with fp32 accumulation (the value is triton's default, ignored for
    them); float64 is IEEE.
    """
    if dtype == torch.float64:
        return "ieee"
    if dtype == torch.float32:
        return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    return "tf32"  # triton's default; has no effect on bf16/fp16 operands


def tf32_rounding(dtype: torch.dtype) -> int:
    """The ``RNA`` constexpr of :func:`round_tf32` for ``tl.dot`` operands of ``dtype`` under the
    current matmul precision: 0 = no rounding (bf16/fp16/fp64, and fp32 under "highest", whose
    dots are IEEE), 1 = PTX ``cvt.rna.tf32.f32`` (GPU), 2 = the same rounding emulated on the
    bits (the interpreter runs no inline asm)."""
    if dtype != torch.float32 or input_precision(dtype) != "tf32":
        return 0
    return 2 if interpreting() else 1


class Tiles(NamedTuple):
    """One launch configuration: tile rows/columns, the K chunk (or the whole padded K), warps and
    software-pipelining stages. Kept in deterministic per-(dtype, precision, K bucket, N bucket)
    tables rather than ``triton.autotune``: a timing-based choice can differ between processes and
    with it the reduction order, hence the bits (docs/design.md convention 7), and the AOT compile check
    (duality_kernels/testing/triton_aot.py) then covers exactly the launched variants."""
    BM: int
    BN: int
    BK: int
    warps: int
    stages: int


def dot_block(n: int, cap: int = 64) -> int:
    """A power-of-two block for a ``tl.dot`` dimension: at least 16, at most ``cap``."""
    b = 16
    while b < n and b < cap:
        b *= 2
    return b


if triton is not None:

    @triton.jit
    def scalar(s, ACC: tl.constexpr):
        """A float64 kernel argument (annotated ``tl.float64``) as an ACC scalar. A plain Python
        float argument is passed as float32, which costs float64 inputs ~1e-8 relative accuracy;
        under the interpreter the argument stays a Python float, where ``tl.cast`` would round it
        through float32 first, hence the sum."""
        return tl.sum(tl.zeros((1,), ACC) + s, axis=0).to(ACC)

    @triton.jit
    def round_tf32(x, RNA: tl.constexpr):
        """fp32 ``x`` rounded to TF32 (10-bit mantissa), to nearest with ties away from zero, as
        cuBLAS rounds TF32 GEMM operands (docs/design.md convention 16). Triton's tf32 ``tl.dot`` hands the
        fp32 bits to the tensor cores, which drop the low 13 mantissa bits (truncation, a bias on
        every sum: triton-lang/triton issue 4574), so operands are rounded here first. ``RNA`` from
        :func:`tf32_rounding`: 0 leaves ``x`` alone, 1 is the PTX instruction, 2 its emulation on
        the bits for the interpreter: adding half an ulp of TF32 (bit 12) to the magnitude bits and
        clearing the 13 low bits rounds half away from zero; a carry into the exponent gives the
        next binade or infinity, as the instruction does; NaN stays NaN."""
        if RNA == 1:
            y = tl.inline_asm_elementwise("cvt.rna.tf32.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                          is_pure=True, pack=1)
        elif RNA == 2:
            bits = x.to(tl.uint32, bitcast=True)
            r = ((bits + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)
            y = tl.where(x != x, x, r)
        else:
            y = x
        return y

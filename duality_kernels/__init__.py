"""duality_kernels: self-supervised losses computed on the cheaper side of the duality between
contrastive and non-contrastive criteria (Garrido et al., ICLR 2023). The contract of every function: docs/spec.md."""

from . import functional, modules
from ._backend import BackendUnavailableError
from .functional import spectrum as _f_spectrum, supervised as _f_supervised, two_tower as _f_two_tower
from .modules import spectrum as _m_spectrum, supervised as _m_supervised, two_tower as _m_two_tower

__version__ = "0.1.0"

# the public names: every family module's __all__ (a function or module is exported by listing it there)
_FAMILIES = (functional, _f_supervised, _f_two_tower, _f_spectrum, modules, _m_supervised, _m_two_tower, _m_spectrum)
__all__ = ["BackendUnavailableError"] + [name for fam in _FAMILIES for name in fam.__all__]
globals().update({name: getattr(fam, name) for fam in _FAMILIES for name in fam.__all__})

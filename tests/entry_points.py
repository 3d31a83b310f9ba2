"""Shared check of the compiled backends' own entry points (docs/spec.md §6): the drop-in
``torch.autograd.Function`` subclasses (``VICRegFunction.apply`` & co.) and the forward custom ops
raise exactly what the public function raises (exception type and message) for bad shapes,
dtypes, devices and scalars, before any kernel runs.

``check_entry_points(backend, module, prefix, views)``: ``module`` holds the Functions
(ops/cuda.py or ops/triton/gram.py), ``prefix`` names the custom ops
(``duality_kernels::<prefix><op>_fwd``), ``views(n, d, dtype, seed)`` makes inputs on the device
the backend runs on here.
"""

import pytest
import torch

import duality_kernels as dk

VICREG = (25.0, 25.0, 1.0, 1.0, 1e-4)  # VICReg's default weights, gamma, eps

# single-input ops: the second view is ignored
SINGLE = {"covariance", "duality_terms"}
# a bad value for each scalar argument position of each op, and one of the wrong type
BAD_PARAMS = {
    "vicreg": [(0, float("nan")), (2, True), (4, -1.0), (3, "1")],
    "barlow_twins": [(0, float("inf")), (1, -1e-5), (0, None)],
    "spectral": [(0, 0.0), (0, -2.0), (0, "2")],
    "cross_correlation": [(0, -1.0), (0, float("nan"))],
    "normalized_gram": [],
    "covariance": [(0, -1), (0, 6), (0, 1.5), (0, True)],
    "duality_terms": [],
}


def public_and_op_calls(backend, module, prefix):
    """(op, public function, drop-in Function, custom op, default arguments after the tensors):
    the public function takes the same arguments (side as a keyword) with ``backend``."""
    ops = torch.ops.duality_kernels
    be = backend
    return [
        ("vicreg", lambda a, b, *p: dk.vicreg_loss(a, b, *p[:-1], side=p[-1], backend=be),
         module.VICRegFunction, getattr(ops, f"{prefix}vicreg_fwd"), [*VICREG, "sample"]),
        ("barlow_twins", lambda a, b, *p: dk.barlow_twins_loss(a, b, *p[:-1], side=p[-1], backend=be),
         module.BarlowTwinsFunction, getattr(ops, f"{prefix}barlow_twins_fwd"), [0.0051, 1e-5, "dimension"]),
        ("spectral", lambda a, b, *p: dk.spectral_contrastive_loss(a, b, *p[:-1], side=p[-1], backend=be),
         module.SpectralContrastiveFunction, getattr(ops, f"{prefix}spectral_fwd"), [2.0, "sample"]),
        ("cross_correlation", lambda a, b, *p: dk.cross_correlation(a, b, *p, backend=be),
         module.CrossCorrelationFunction, getattr(ops, f"{prefix}cross_correlation_fwd"), [1e-5]),
        ("normalized_gram", lambda a, b: dk.normalized_gram(a, b, backend=be),
         module.NormalizedGramFunction, getattr(ops, f"{prefix}normalized_gram_fwd"), []),
        ("covariance", lambda a, b, *p: dk.covariance(a, *p, backend=be),
         module.CovarianceFunction, getattr(ops, f"{prefix}covariance_fwd"), [1]),
        ("duality_terms", lambda a, b, *p: dk.duality_terms(a, side=p[-1], backend=be),
         module.DualityTermsFunction, getattr(ops, f"{prefix}duality_terms_fwd"), ["dimension"]),
    ]


def _raised(call):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    return type(info.value), str(info.value)


def _bad_calls(z1, z2, defaults, bad_params, sided):
    """(what, z1, z2, scalar arguments) of each bad call of an op: bad tensors with the default
    scalars, then each bad scalar with good tensors."""
    tensors = [
        ("1-D", z1[:, 0].contiguous(), z2[:, 0].contiguous()),
        ("3-D", z1.unsqueeze(0), z2.unsqueeze(0)),
        ("shapes", z1, z2[:5]),
        ("dtypes", z1, z2.double()),
        ("integer", z1.int(), z2.int()),
        ("one row", z1[:1], z2[:1]),
        ("devices", z1, z2.to("meta")),
        ("meta device", z1.to("meta"), z2.to("meta")),
    ]
    if z1.device.type == "cuda":
        tensors.append(("cpu device", z1.cpu(), z2.cpu()))
    for what, a, b in tensors:
        yield what, a, b, list(defaults)
    for pos, value in bad_params:
        params = list(defaults)
        params[pos] = value
        yield f"argument {pos} = {value!r}", z1, z2, params
    if sided:
        yield "side 'auto'", z1, z2, list(defaults[:-1]) + ["auto"]


def check_entry_points(backend, module, prefix, views):
    """Every Function and forward custom op, with bad shapes, dtypes, devices and scalars: the
    public function's exception type and message. The ops take ``side`` resolved ("auto" is theirs
    to reject). A custom op parses its arguments against its schema first (a value of another
    Python type is torch's RuntimeError there), and on meta tensors runs its fake implementation
    (shape propagation): those calls go to the Function only. Returns the number of checks."""
    z1, z2 = views(6, 4, torch.float32, 18)
    checked = 0
    for op, public, function, custom, defaults in public_and_op_calls(backend, module, prefix):
        single = op in SINGLE
        sided = op in ("vicreg", "barlow_twins", "spectral", "duality_terms")
        for what, a, b, params in _bad_calls(z1, z2, defaults, BAD_PARAMS[op], sided):
            if single and what in ("shapes", "dtypes", "devices"):
                continue  # b is not an argument
            if what == "side 'auto'":
                expected = (ValueError, "side must be one of 'sample', 'dimension'; got 'auto'")
            else:
                try:
                    public(a, b, *params)
                except (ValueError, TypeError) as exc:
                    expected = (type(exc), str(exc))
                else:  # e.g. one row is enough for normalized_gram and duality_terms
                    continue
            args = [a, *params] if single else [a, b, *params]
            assert _raised(lambda: function.apply(*args)) == expected, (op, what, "Function")
            checked += 1
            on_meta = any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in args)
            schema_typed = all(type(p) is type(q) for p, q in zip(params, defaults))
            if not on_meta and schema_typed:
                assert _raised(lambda: custom(*args)) == expected, (op, what, "custom op")
                checked += 1
    return checked

"""duality_kernels: SSL losses computed on the cheaper side of the contrastive/non-contrastive duality."""

__version__ = "0.1.0"

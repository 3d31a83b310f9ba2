"""The package's own exception types."""


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run this op on this machine or these tensors."""

"""Error types: each carries one message that says what went wrong and what to do."""


class QuantError(Exception):
    """A pytest-quant failure with a user-facing message."""


class QuantUsageError(QuantError):
    """Bad input: an option, marker argument, model, scheme or config file the user can fix."""


class QuantEnvironmentError(QuantError):
    """A missing or broken environment (vLLM interpreter, network, package)."""

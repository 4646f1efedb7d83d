"""The library's one error type for bad input (no heavy imports: download jobs use it too)."""


class SaeError(ValueError):
    """Bad SAE, model or config input. The message names the file and the problem."""

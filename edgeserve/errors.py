"""The one error tree of edgeserve.

Every error edgeserve raises on purpose is an :class:`EdgeserveError`. Engine errors (onnxruntime, onnx,
the quantisation tools) are mapped to these once, at the boundary, with ``raise ... from``; nothing above
the backend seam ever sees a library's own exception type. No error here knows about HTTP or the CLI.

    EdgeserveError
    ├── ConfigError               a setting is out of range or contradicts another
    ├── ModelFileError            a model file is unreadable, malformed or unsafe
    ├── PackageError              a package folder or its manifest is invalid
    │   ├── IntegrityError        a file does not match the digest the manifest records
    │   └── GoldenMismatchError   this machine computes different answers than the converter recorded
    ├── ConversionError           the converter could not produce a verified package
    │   ├── DataError             calibration or evaluation data does not match the model
    │   └── FidelityError         the result is outside the requested fidelity budget
    ├── InputError                a request does not satisfy the model's input contract
    │   └── EnvelopeError         its values are outside the model's envelope and the guard rejects them
    ├── InferenceError            the backend failed while running a request
    ├── OverloadError             the runtime cannot take or finish the request in time
    │   ├── QueueFull             the batching queue is full: retry later
    │   └── Timeout               the request's deadline passed before it ran
    ├── RepositoryError           a model repository operation was refused (bad name, no such version …)
    │   └── ModelNotFound         no such model or version in the repository or runtime
    ├── AuditError                the audit log cannot be opened, written or read
    └── ClosedError               the model or runtime was used after close()
"""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (or its type name), cut to ``limit`` characters: how edgeserve
    quotes a library's error inside its own one-line messages."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


class EdgeserveError(Exception):
    """Base class of every error edgeserve raises on purpose."""


class ConfigError(EdgeserveError, ValueError):
    """A setting is out of range or contradicts another setting."""


class ModelFileError(EdgeserveError):
    """A model file is unreadable, malformed, too large or unsafe (external data, custom ops)."""


class PackageError(EdgeserveError):
    """A package folder or its manifest is missing, malformed or of an unknown schema version."""


class IntegrityError(PackageError):
    """A file in a package does not match the sha256 digest its manifest records."""


class GoldenMismatchError(PackageError):
    """Re-running the golden inputs at load time gave outputs different from the recorded ones."""


class ConversionError(EdgeserveError):
    """The converter could not produce a verified package; nothing was written."""


class DataError(ConversionError, ValueError):
    """Calibration or evaluation data does not match the model's inputs (names, dtypes, shapes)."""


class FidelityError(ConversionError):
    """The converted model is outside the requested fidelity budget against the fp32 reference."""


class MetricError(ConfigError):
    """A fidelity metric cannot be computed on this model's outputs (no mask input, no class axis…); says what it
    needs."""


class InputError(EdgeserveError, ValueError):
    """A request does not satisfy the model's input contract (names, dtypes, ranks, dimensions)."""


class EnvelopeError(InputError):
    """A request's values fall outside the model's envelope (NaN/inf, out of the reference range, unknown token
    ids) and the model's guard policy rejects them. ``check`` and ``input`` name what failed."""

    def __init__(self, message: str, *, check: str = "", input: str = "") -> None:
        super().__init__(message)
        self.check = check
        self.input = input


class InferenceError(EdgeserveError):
    """The inference backend failed while running a request that passed the input contract."""


class OverloadError(EdgeserveError):
    """The runtime cannot take or finish the request in time; retrying later may succeed."""


class QueueFull(OverloadError):
    """The batching queue is full, so the request was rejected at once without queueing."""


class Timeout(OverloadError):
    """The request's deadline passed before it could run; it was not run."""


class RepositoryError(EdgeserveError, ValueError):
    """A model repository operation was refused: an invalid name or version, a missing package, a bad state file."""


class ModelNotFound(RepositoryError, LookupError):
    """No such model or version in the repository (or not loaded in the runtime)."""


class AuditError(EdgeserveError):
    """The audit log cannot be opened, written or read (a full disk, a read-only path, not an audit log)."""


class ClosedError(EdgeserveError, RuntimeError):
    """A model or runtime was used after ``close()``."""

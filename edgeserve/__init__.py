"""edgeserve: convert, quantise, verify and serve models on CPU edge machines.

    import edgeserve
    pkg = edgeserve.convert("model.onnx", "model-int8", quantize="dynamic")
    with edgeserve.load(pkg.path) as model:
        outputs = model.predict(x)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import BatchConfig as BatchConfig
from .config import CacheConfig as CacheConfig
from .config import GuardConfig as GuardConfig
from .config import QuantizeConfig as QuantizeConfig
from .config import SessionConfig as SessionConfig
from .config import TriggerConfig as TriggerConfig
from .errors import AuditError as AuditError
from .errors import ClosedError as ClosedError
from .errors import ConfigError as ConfigError
from .errors import ConversionError as ConversionError
from .errors import DataError as DataError
from .errors import EdgeserveError as EdgeserveError
from .errors import EnvelopeError as EnvelopeError
from .errors import FidelityError as FidelityError
from .errors import GoldenMismatchError as GoldenMismatchError
from .errors import InferenceError as InferenceError
from .errors import InputError as InputError
from .errors import IntegrityError as IntegrityError
from .errors import MetricError as MetricError
from .errors import ModelFileError as ModelFileError
from .errors import ModelNotFound as ModelNotFound
from .errors import OverloadError as OverloadError
from .errors import PackageError as PackageError
from .errors import QueueFull as QueueFull
from .errors import RepositoryError as RepositoryError
from .errors import Timeout as Timeout
from .package import Manifest as Manifest
from .package import Package as Package
from .tensors import TensorSpec as TensorSpec

if TYPE_CHECKING:
    from .converter.api import convert as convert
    from .guard.audit import AuditLog as AuditLog
    from .metrics import Metric as Metric
    from .metrics import Target as Target
    from .metrics import metric as metric
    from .metrics import target as target
    from .runtime.model import Model as Model
    from .runtime.model import load as load
    from .runtime.repository import Repository as Repository
    from .runtime.runtime import Runtime as Runtime

__version__ = "0.1.0"

__all__ = [
    "AuditError",
    "AuditLog",
    "BatchConfig",
    "CacheConfig",
    "ClosedError",
    "ConfigError",
    "ConversionError",
    "DataError",
    "EdgeserveError",
    "EnvelopeError",
    "FidelityError",
    "GoldenMismatchError",
    "GuardConfig",
    "InferenceError",
    "InputError",
    "IntegrityError",
    "Manifest",
    "Metric",
    "MetricError",
    "Model",
    "ModelFileError",
    "ModelNotFound",
    "OverloadError",
    "Package",
    "PackageError",
    "QuantizeConfig",
    "QueueFull",
    "Repository",
    "RepositoryError",
    "Runtime",
    "SessionConfig",
    "Target",
    "TensorSpec",
    "Timeout",
    "TriggerConfig",
    "convert",
    "load",
    "metric",
    "target",
]

# NOTE: the runtime imports onnxruntime and the converter imports its quantisation tools; both are loaded on
# first use so that `import edgeserve` (and the CLI's start-up) stays cheap.
_LAZY = {"convert": ("edgeserve.converter.api", "convert"), "load": ("edgeserve.runtime.model", "load"),
         "Model": ("edgeserve.runtime.model", "Model"), "Runtime": ("edgeserve.runtime.runtime", "Runtime"),
         "Repository": ("edgeserve.runtime.repository", "Repository"),
         "metric": ("edgeserve.metrics", "metric"), "target": ("edgeserve.metrics", "target"),
         "Metric": ("edgeserve.metrics", "Metric"), "Target": ("edgeserve.metrics", "Target"),
         "AuditLog": ("edgeserve.guard.audit", "AuditLog")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgeserve' has no attribute {name!r}")

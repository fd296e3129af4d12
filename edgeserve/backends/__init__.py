"""The backend seam: the only modules that import an inference engine."""

from __future__ import annotations

from .base import Backend, Session, get_backend

__all__ = ["Backend", "Session", "get_backend"]

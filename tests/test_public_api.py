"""The public API is what edgeserve/__init__.py exports: complete, sorted, and importable."""

from __future__ import annotations

import edgeserve
from edgeserve import errors


def test_all_is_sorted_and_resolves() -> None:
    assert edgeserve.__all__ == sorted(edgeserve.__all__)
    for name in edgeserve.__all__:
        assert getattr(edgeserve, name) is not None, name


def test_every_error_is_exported() -> None:
    error_types = {n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, errors.EdgeserveError)}
    assert error_types <= set(edgeserve.__all__)


def test_errors_form_one_tree() -> None:
    for name in edgeserve.__all__:
        value = getattr(edgeserve, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, edgeserve.EdgeserveError), name

"""The converter: frontends, graph preparation, quantisation and verification into a package.

The entry point is :func:`edgeserve.convert` (``edgeserve.converter.api.convert``); modules load lazily so that
reading sample data does not pull in the quantisation tools.
"""

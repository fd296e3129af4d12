"""``edgeserve serve``: the Open Inference Protocol (KServe v2) over REST and gRPC, a thin adapter over ``Runtime``.

- :mod:`.codec` — protocol datatypes and tensors to and from numpy (JSON, the binary extension, raw gRPC bytes);
- :mod:`.dataplane` — the one place protocol requests become ``Runtime`` calls; REST and gRPC only translate;
- :mod:`.rest` — the ASGI app (a small router, no framework), :mod:`.rpc` — gRPC's ``GRPCInferenceService``;
- :mod:`.auth` — bearer tokens with scopes, :mod:`.metrics` — Prometheus, :mod:`.app` — both servers in one
  process, with graceful drain on SIGTERM.

Needs the ``server`` extra (uvicorn, grpcio, prometheus-client, orjson); the core never imports any of this.
"""

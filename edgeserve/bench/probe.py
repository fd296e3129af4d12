"""A fresh process that loads one package and answers once: the cold-start and memory probe.

    python -m edgeserve.bench.probe [--threads N] [--cache-dir DIR] [PACKAGE INPUTS.npz]

Prints one JSON line as soon as the first answer exists, then exits. Without arguments it only imports the
runtime, which gives the memory baseline that a variant's peak is compared with.
"""

from __future__ import annotations

import json
import resource
import sys
import time


def _peak_rss_bytes() -> int:
    # NOTE: Linux keeps ru_maxrss across exec, so a probe forked from a large parent would report the parent's
    # size; VmHWM belongs to the new address space and starts from zero at exec.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def main(argv: list[str]) -> int:
    t0 = time.perf_counter()
    threads, cache_dir = None, None
    while argv[:1] in (["--threads"], ["--cache-dir"]):
        if argv[0] == "--threads":
            threads = int(argv[1])
        else:
            cache_dir = argv[1]
        argv = argv[2:]
    import numpy as np

    import edgeserve
    from edgeserve.config import SessionConfig

    imported = time.perf_counter()
    result: dict[str, float | bool] = {"import_s": imported - t0}
    if argv:
        package, inputs = argv
        with np.load(inputs, allow_pickle=False) as data:
            feed = {k: data[k] for k in data.files}
        # as users load: golden samples checked; the graph cache on when a folder is given
        model = edgeserve.load(package, config=SessionConfig(intra_op_threads=threads, cache_dir=cache_dir))
        loaded = time.perf_counter()
        model.predict(feed)
        answered = time.perf_counter()
        result.update(load_s=loaded - imported, first_predict_s=answered - loaded, from_cache=model.from_cache)
    else:
        import onnxruntime  # noqa: F401  - the baseline holds what every variant's process holds
    result["peak_rss_bytes"] = _peak_rss_bytes()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

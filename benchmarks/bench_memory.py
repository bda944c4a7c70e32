"""Peak-memory trial: a full ``iterate`` scan, measured in a fresh child process per contender.

A fresh process per contender keeps one contender's freed memory from hiding
another's growth. The child opens its contender's database copy, builds the scan
op, and measures three scans in a row:

1. cold scan: growth of the peak resident set size (RSS, Linux ``VmHWM`` reset
   through ``/proc/self/clear_refs``) over the RSS before it. It includes
   SQLite's page cache filling up to its ``cache_size`` (62.5 MiB with
   appdb's ``cache_size=-64000``), the same for every contender.
2. warm scan: the same measurement once that page cache is full: what streaming
   the rows costs (rows kept alive, buffers, leaks). The target is judged on this.
3. Python heap: ``tracemalloc`` peak over its start, which sees Python objects
   only (SQLite allocates with the C library's malloc, outside it).

Run as ``python bench_memory.py CONTENDER DB_PATH``; prints one JSON object.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

__all__ = ["measure_all"]

_STATUS = "/proc/self/status"


def _status_kib(field: str) -> int:
    with open(_STATUS) as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from {_STATUS}")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux 4.0+); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def rss_growth(op: Callable[[], object]) -> int | None:
    """Peak RSS during ``op()`` minus RSS before it, in bytes; None without Linux /proc."""
    gc.collect()
    if not _reset_peak():
        return None
    before = _status_kib("VmRSS")
    op()
    return max(0, _status_kib("VmHWM") - before) * 1024


def python_heap_growth(op: Callable[[], object]) -> int:
    """Peak of Python-allocated memory during ``op()`` over its level before, in bytes."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        op()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return max(0, peak - before)


def _child(key: str, path: str) -> dict[str, Any]:
    from bench_contenders import create

    contender = create(key)
    contender.open(path)
    try:
        op = contender.scan()
        assert op is not None
        cold = rss_growth(op)
        warm = rss_growth(op)
        heap = python_heap_growth(op)
        if contender.holds_read_snapshot():
            raise RuntimeError(f"{contender.label} kept a read snapshot after the scan")
    finally:
        contender.close()
    return {"rss_cold_bytes": cold, "rss_warm_bytes": warm, "python_heap_bytes": heap}


def measure_all(
    paths: dict[str, str], import_paths: list[str], progress: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """Run the child once per contender (``paths``: key -> its database copy)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*import_paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    results: dict[str, dict[str, Any]] = {}
    for key, path in paths.items():
        progress(f"peak memory: {key}")
        done = subprocess.run(
            [sys.executable, os.path.abspath(__file__), key, path],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the memory probe for {key} failed:\n{done.stderr.strip()}")
        results[key] = json.loads(done.stdout)
    return results


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], sys.argv[2])))

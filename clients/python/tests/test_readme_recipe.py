"""The top-level README's Python recipe runs as written: it is taken from the README itself
(the block after `<!-- recipe:python -->`) and driven by 200 threads on a cold key."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

from servers import REPO, Server

CALLERS = 200


def load_recipe() -> Dict[str, Any]:
    readme = (REPO / "README.md").read_text()
    match = re.search(r"<!-- recipe:python -->\n```python\n(.*?)```", readme, re.S)
    assert match, "the README has no marked Python recipe"
    namespace: Dict[str, Any] = {}
    exec(compile(match.group(1), "README.md recipe", "exec"), namespace)
    return namespace


def test_readme_recipe_serves_200_callers_with_one_loader_call(module_server: Server) -> None:
    recipe = load_recipe()
    commands, waits = recipe["connect"](module_server.url)
    key = f"recipe:{time.monotonic_ns()}"
    calls: List[int] = []
    calls_lock = threading.Lock()

    def loader() -> bytes:
        with calls_lock:
            calls.append(1)
        time.sleep(0.05)  # the database query being protected
        return b"\x00value\xff"

    results: List[Any] = [None] * CALLERS
    errors: List[BaseException] = []
    start = threading.Barrier(CALLERS)

    def caller(i: int) -> None:
        try:
            start.wait()
            results[i] = recipe["cached"](commands, waits, key, loader, ttl=60, tags=("recipe",))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(CALLERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "callers were stranded (deadlock)"
    assert errors == []
    assert len(calls) == 1, f"{len(calls)} loader calls"
    assert results == [b"\x00value\xff"] * CALLERS
    assert commands.execute_command("CACHE.GET", key) == b"\x00value\xff"
    commands.close()
    waits.close()

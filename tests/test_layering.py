"""The layering the developers' guide promises: ``serve_app`` imports no Ray, the pipeline no web framework.

One fresh interpreter imports every module of ``serve_app``, the pipeline's first, and names the
module after whose import each of these packages first appeared.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEB_FRAMEWORKS = ["fastapi", "starlette", "httpx"]

IMPORT_ALL = """
import importlib, json, pathlib, sys
watched = sys.argv[1].split(",")
# From the file tree, not pkgutil.walk_packages: that imports every package while it walks.
files = sorted(pathlib.Path("serve_app").rglob("*.py"))
names = [".".join(path.with_suffix("").parts).removesuffix(".__init__") for path in files]
names.sort(key=lambda name: not name.startswith("serve_app.pipeline"))  # stable: the pipeline first
first_seen_after = {}
for name in names:
    importlib.import_module(name)
    for top in watched:
        if top in sys.modules and top not in first_seen_after:
            first_seen_after[top] = name
print(json.dumps({"modules": names, "first_seen_after": first_seen_after}))
"""


def test_serve_app_imports_no_ray_and_the_pipeline_no_web_framework():
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, ",".join(["ray", *WEB_FRAMEWORKS])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert sum(name.startswith("serve_app.pipeline.") for name in found["modules"]) > 5  # the walk found them
    assert "ray" not in found["first_seen_after"], found["first_seen_after"]
    pipeline_web = {
        top: module
        for top, module in found["first_seen_after"].items()
        if top in WEB_FRAMEWORKS and module.startswith("serve_app.pipeline")
    }
    assert pipeline_web == {}

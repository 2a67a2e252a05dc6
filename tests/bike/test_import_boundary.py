"""``bike/`` is the method and its engine: importing its entry points loads no orchestration."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FORBIDDEN = ("harness", "mlflow", "optuna", "submitit")


@pytest.mark.parametrize("module", ["bike.train", "bike.evaluate"])
def test_entry_point_imports_no_orchestration(module):
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert module in loaded
    leaked = [m for m in loaded if m.split(".")[0] in FORBIDDEN]
    assert leaked == [], f"importing {module} loaded {leaked}"

"""The MLflow dashboard in a real browser (issue #18): ``mlflow server`` on 127.0.0.1 against a small
results store this test writes, the runs view (the deep link of ``bikebench ui``) and the compare view
of two variants rendered by headless Chromium (Debian's ``chromium``; ``.ci/run`` installs it). The
rendered page must show the variant names, their cells and headline values.

Without chromium the test skips, except under ``CI=true`` where it fails. ``BIKEBENCH_SCREENSHOTS=DIR``
saves the screenshots (runs view, compare view, a run's pictures) there."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from harness.mlflow_runs import TAG_RUN_ID, runs_view_link
from harness.tracking import Tracker, default_tracking_uri
from tests.harness.mlflow_store import SPEC, build_store

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
#: Virtual time the browser gives the React app to fetch and render (ms of page time, not wall time).
RENDER_BUDGET_MS = 20000


def browser() -> str:
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed (.ci/run installs it: apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium); CI runs this test")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(chrome: str, url: str, screenshot: Path | None = None, size: str = "1600,1000") -> str:
    """The DOM of ``url`` after the app rendered (and a screenshot of it)."""
    args = [chrome, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={size}",
            f"--virtual-time-budget={RENDER_BUDGET_MS}", "--user-data-dir=" + str(Path(os.environ.get("TMPDIR", "/tmp")) / f"bb-chrome-{os.getpid()}")]
    out = subprocess.run(args + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
    if screenshot is not None:
        subprocess.run(args + [f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
    return out.stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    chrome = browser()
    results = tmp_path_factory.mktemp("browser") / "results"
    runs = build_store(results)
    port = free_port()
    mlflow = str(Path(sys.executable).parent / "mlflow")
    proc = subprocess.Popen([mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", default_tracking_uri(results)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    base = f"http://127.0.0.1:{port}"
    try:
        import requests

        for _ in range(240):  # the server answers /health once it is up (seconds; a slow machine, more)
            try:
                if requests.get(base + "/health", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None:
                pytest.fail("mlflow server exited at start")
            time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not answer /health")
        yield chrome, base, results, runs
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def shots() -> Path | None:
    where = os.environ.get("BIKEBENCH_SCREENSHOTS")
    if not where:
        return None
    Path(where).mkdir(parents=True, exist_ok=True)
    return Path(where)


def test_the_runs_view_lists_the_variants_in_table_order(server):
    chrome, base, results, runs = server
    tracker = Tracker(results, default_tracking_uri(results))
    exp = tracker.client.get_experiment_by_name(SPEC)
    folder = shots()
    dom = render(chrome, runs_view_link(base, exp.experiment_id), folder / "runs_view.png" if folder else None)
    names = [f"{SPEC}.{v}" for v in ("mean_pool", "vcs", "bike")]
    assert all(n in dom for n in names), dom[-2000:]
    assert [dom.index(n) for n in names] == sorted(dom.index(n) for n in names)  # sorted by bikebench.order
    assert "A small Table 6 for the MLflow tests" in dom  # the experiment says what its spec is


def test_the_compare_view_shows_cells_and_headline_values(server):
    chrome, base, results, runs = server
    tracker = Tracker(results, default_tracking_uri(results))
    exp = tracker.client.get_experiment_by_name(SPEC)
    ids = {v: tracker.client.search_runs([exp.experiment_id], f"tags.`{TAG_RUN_ID}` = '{runs[v].run_id}'")[0].info.run_id
           for v in ("vcs", "bike")}
    url = (f"{base}/#/compare-runs?runs={quote(json.dumps(list(ids.values())))}"
           f"&experiments={quote(json.dumps([exp.experiment_id]))}")
    folder = shots()
    dom = render(chrome, url, folder / "compare_view.png" if folder else None, size="1600,2400")
    for text in ("ablate.vcs", "ablate.bike", "6a/vcs/top1", "6e/trained/V+A", "val/fused_top1", "val/video_top1",
                 "74.25", "76.75"):
        assert text in dom, text
    if folder:  # a run's pictures: its figures/ artifacts
        render(chrome, f"{base}/#/experiments/{exp.experiment_id}/runs/{ids['bike']}/artifacts/figures/confusion.json",
               folder / "run_pictures.png")

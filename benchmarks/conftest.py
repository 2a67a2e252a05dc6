"""Benchmarks run offline, like the tests."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print every benchmark's derived figures (``extra_info``: ratios, goals, rates) after the table,
    so `make bench` shows them without ``-s``."""
    session = getattr(config, "_benchmarksession", None)
    benchmarks = getattr(session, "benchmarks", None) or []
    rows = [(b.name, b.extra_info) for b in benchmarks if getattr(b, "extra_info", None)]
    if not rows:
        return
    terminalreporter.section("benchmark figures (extra_info)")
    for name, info in sorted(rows):
        figures = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        terminalreporter.write_line(f"{name}: {figures}")

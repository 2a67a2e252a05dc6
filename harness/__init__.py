"""bikebench orchestration: specs, expansion, executors, tracking, tables, regression checks, tuning."""

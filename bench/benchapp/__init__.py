"""The handlers of the slow-handler benchmarks (bench/slow_handlers.py), installed by bench/settings.py."""

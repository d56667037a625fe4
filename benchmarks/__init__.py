"""Benchmarks: fpn-geo against a naive baseline (run.py), scenes made from real imagery (scenes.py)."""

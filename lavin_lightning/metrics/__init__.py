"""Benchmark scorers (pure functions over predictions and ground truth)."""

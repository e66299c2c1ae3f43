"""Measuring recomposer: the shapes-world analyser (the judge), controllability and speed benchmarks."""

"""Orchestration: many runs.

`sweep` (a request expanded into independent fits, run locally or through submitit, resumable), `regress` (every
method on `micro` against the committed reference), `perf` (side-by-side speed probes) and `utility` (the
downstream segmenter trained on translated images).
"""

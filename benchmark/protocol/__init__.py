"""The protocol: what a run is and what it may read.

`config` (the `RunSpec` that names one fit, its id, and the three config layers: typed defaults, per-dataset YAML
deltas, `--set`), `records` (the record schema, `record_sha`, atomic writes and the `done` seal), `budget` (the
preset's FLOP budget and the iterations it buys), `validation` (the checkpoint and knob choices made on the
validation split), `samples` (the fixed test scenes whose translations every run saves, and their files) and
`provenance` (git sha and package versions written into every run). Imports neither torch
nor the methods at module level, so tables can be built from records alone.
"""

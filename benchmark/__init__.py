"""The benchmark harness, by layer (each sub-package's docstring says what it holds):

* `protocol`      - what a run is and what it may read: specs and config layering, the records schema and their I/O,
                    the compute budget, the choices made on validation, provenance;
* `run`           - one fit from data to sealed records: context and lock, fitting, evaluation, the stages of a run
                    and their resume state, multi-device, samples, rescoring;
* `scoring`       - the metrics: their maths, the `METRICS` declarations, radiomics, weights, the scorer, validity;
* `reporting`     - records to tables and figures (torch-free): loading, statistics, tables, figures, the archive;
* `orchestration` - many runs: sweeps, the regression, performance probes, downstream utility;
* `cli`           - `python -m benchmark ...`: the parsers and one command function per sub-command.

Layers import downwards only (cli -> orchestration -> run -> scoring/protocol; reporting reads protocol and
scoring's declarations); `benchmark.errors` holds the suite's own error types and imports nothing.
"""

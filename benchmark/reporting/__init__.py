"""Reporting: records to tables and figures, without torch.

`load` (records of live runs and the archive, one fit per point), `stats` (intervals over seeds and test-set
sampling, paired differences, ranks), `tables` (the summary, ranks, the formatted and LaTeX tables), `paper`
(Table 1 and the convergence table), `utility_tables` (downstream utility and the paired gap), `figures` and
`images` (the plots and the qualitative grid), `compute` and `compute_figure` (rank against training budget:
compute.md, the headline's verdicts, the compute figure), `archive` (finished runs' records into `results/records`) and
`report` (`build_report`, what `collect` writes).
"""

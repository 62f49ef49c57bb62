"""Scoring: the metrics and what computes them.

`metrics` (the maths, float64, each tested against an independent reference), `declarations` (`METRICS`, the one
metric schema every record, table and plot reads), `radiomics` (FRD's features), `weights` (pretrained network
weights and their checksums), `scorer` (scores a translated set against its references) and `validity` (does a
realism metric rise with known degradations of real images).
"""

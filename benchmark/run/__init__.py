"""One run: a `RunSpec` from data to sealed records.

`context` (what an invocation shares: scorer, loaded data, the run folder's lock), `fit` (building the method,
its budget and learning curve, training to the final and selected weights), `evaluate` (translating the
validation and test splits over the knob grid and assembling records), `checks` (data, split and sampling checks,
opt-in speed-ups), `stages` (the order of a run, its resume state and `run_one`), `devices` (fits and translation
over several devices or nodes), `resume`/`stopping` (the resume point and clean stops on signals) and `rescore`
(metrics added to finished runs).
"""

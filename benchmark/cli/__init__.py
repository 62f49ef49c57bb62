"""`python -m benchmark ...`: the parsers (declared once, common flags in one parent parser) and one command
function per sub-command. `precheck` validates the arguments of a fit before torch is imported. Errors of the
suite's own types (`benchmark.errors`) end as one line `error: ...`; anything else keeps its traceback.
"""

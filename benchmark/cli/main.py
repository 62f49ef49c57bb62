"""`python -m benchmark ...`: parse, check a fit's arguments before torch loads, run the sub-command's function.

Exit codes: 0 done; 1 a sweep with failed fits; 2 an error of the suite's own types (`benchmark.errors`: one line
`error: ...` with the fix) or a folder that cannot be written; 130 interrupted (Ctrl-C); 143 stopped by SIGTERM (a
stopped fit saves its resume point first). Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys

from benchmark.cli import external_commands as extc
from benchmark.cli import fit_commands as fitc
from benchmark.cli import report_commands as repc
from benchmark.cli.parsers import build_parser

#: sub-command -> its function
COMMANDS = {"run": fitc.cmd_run, "sweep": fitc.cmd_sweep, "rescore": fitc.cmd_rescore, "collect": repc.cmd_collect,
            "figures": repc.cmd_figures, "archive": repc.cmd_archive, "regress": repc.cmd_regress,
            "validity": repc.cmd_validity, "ceiling": repc.cmd_ceiling, "utility": repc.cmd_utility,
            "perf": repc.cmd_perf, "weights": repc.cmd_weights, "export": extc.cmd_export, "score": extc.cmd_score}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from benchmark.errors import BenchmarkError
    from benchmark.run.stopping import Stopped, install

    install()  # SIGTERM stops with one line and exit 143, as Ctrl-C does with 130
    try:
        if args.command in ("run", "sweep"):
            from benchmark.cli.precheck import check_fit_args

            check_fit_args(args)  # before torch and Lightning load: a bad argument answers at once
        return COMMANDS[args.command](args)
    except BenchmarkError as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    except PermissionError as exc:
        print(f"error: {exc.filename}: permission denied ({exc.strerror}); make it writable or pass --results-dir "
              "/ --out elsewhere", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: every finished record is on disk; run the same command again to resume",
              file=sys.stderr)
        return 130
    except Stopped as exc:
        print(exc.message(), file=sys.stderr)
        return exc.exit_code

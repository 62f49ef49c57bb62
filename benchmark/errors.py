"""The suite's own error types. The command line prints their message as one line `error: ...` and exits 2; every
other exception is a bug and keeps its traceback. Imports nothing, so every layer can raise them.

Each subclasses the built-in type a caller would catch for it (a bad value is still a `ValueError`), so code that
catches the built-in keeps working.
"""


class BenchmarkError(Exception):
    """A problem with the user's request, files or environment; the message is one line that says the fix."""


class RunError(BenchmarkError, RuntimeError):
    """A run cannot go on: its folder, data, weights or records are not as it needs them."""


class WeightsUnavailable(BenchmarkError, RuntimeError):
    """Weights are missing or fail verification; the message says why and how to fix it."""


class ConfigError(BenchmarkError, ValueError):
    """A value of the request (an argument, `--set`, a config file) the suite cannot use."""


class UnknownName(BenchmarkError, KeyError):
    """A name that is not registered (a method, dataset, task, preset or metric); the message lists the known ones."""

    def __str__(self) -> str:  # a KeyError's str() quotes its message
        return str(self.args[0]) if self.args else ""


class NotFound(BenchmarkError, FileNotFoundError):
    """Nothing to read where the request points (no finished runs, no records)."""


class user_input:  # noqa: N801 - a context manager used like a function
    """Around a call that hands the user's values to a library outside this package (`datasets`, `methods`: their
    registries, presets and config readers, which raise the built-in types): a KeyError becomes `UnknownName`, a
    ValueError `ConfigError` and a FileNotFoundError `NotFound`, with the same message."""

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb) -> bool:
        if exc is None or isinstance(exc, BenchmarkError):
            return False
        for builtin, ours in ((KeyError, UnknownName), (FileNotFoundError, NotFound), (ValueError, ConfigError)):
            if isinstance(exc, builtin):
                raise ours(exc.args[0] if exc.args else str(exc)) from exc
        return False

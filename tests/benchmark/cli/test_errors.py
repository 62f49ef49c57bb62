"""The command line's error contract: the suite's own errors end as one line and exit 2; anything else is a bug and
keeps its traceback."""
import pytest

from benchmark.errors import BenchmarkError, ConfigError, NotFound, RunError, UnknownName, user_input


def test_user_input_turns_a_librarys_builtin_errors_into_the_suites_with_the_same_message():
    for raised, ours, builtin in ((KeyError("unknown dataset 'x'"), UnknownName, KeyError),
                                  (ValueError("size: 'abc' is not a whole number"), ConfigError, ValueError),
                                  (FileNotFoundError("no folder /x"), NotFound, FileNotFoundError)):
        with pytest.raises(ours) as info, user_input():
            raise raised
        assert isinstance(info.value, builtin) and isinstance(info.value, BenchmarkError)
        assert str(info.value) == raised.args[0] and info.value.__cause__ is raised
    with pytest.raises(TypeError), user_input():  # not a value the user gave: left alone
        raise TypeError("a bug")
    with pytest.raises(RunError), user_input():  # already the suite's own: unchanged
        raise RunError("x")


def test_a_suite_error_is_one_line_and_any_other_exception_keeps_its_traceback(monkeypatch, capsys):
    import benchmark.cli.main as cli

    def fails(exc):
        def command(args):
            raise exc
        return command

    monkeypatch.setitem(cli.COMMANDS, "collect", fails(ConfigError("records of protocol versions [1, 2] are mixed")))
    assert cli.main(["collect"]) == 2
    assert capsys.readouterr().err == "error: records of protocol versions [1, 2] are mixed\n"
    monkeypatch.setitem(cli.COMMANDS, "collect", fails(UnknownName("unknown method 'x'; available: identity")))
    assert cli.main(["collect"]) == 2
    assert capsys.readouterr().err == "error: unknown method 'x'; available: identity\n"  # no KeyError quotes
    for bug in (KeyError("dataset"), ValueError("could not convert string to float"), FileNotFoundError("x.json")):
        monkeypatch.setitem(cli.COMMANDS, "collect", fails(bug))
        with pytest.raises(type(bug)):
            cli.main(["collect"])

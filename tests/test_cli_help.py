"""Every option of every `temde` command explains itself: help text, and the default where there is one."""
import argparse

import pytest

from temde.cli import build_parser, main


def _commands(parser, path=("temde",), seen=None):
    """(command path, parser) for the top-level parser and every sub-command below it (an alias once)."""
    seen = set() if seen is None else seen
    seen.add(id(parser))
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    yield from _commands(sub, path + (name,), seen)


def _options():
    """(command, option action, whether it has a default to state) for every option of every command."""
    seen = set()
    for path, parser in _commands(build_parser()):
        # One option of a required either-or group is always given; an optional output ("also write ...") is
        # simply not written without it.
        chosen = {id(a) for group in parser._mutually_exclusive_groups if group.required for a in group._group_actions}
        for action in parser._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction) and id(action) not in seen:
                seen.add(id(action))
                defaults = (action.nargs != 0 and not action.required and id(action) not in chosen
                            and not (action.help or "").startswith("also write"))
                yield " ".join(path), action, defaults


def test_the_walk_reaches_every_command():
    names = {path for path, _ in _commands(build_parser())}
    for command in ("temde train", "temde prepare folder", "temde prepare openclipart", "temde bench pool",
                    "temde bench model", "temde bench index", "temde bench two-stage", "temde index build",
                    "temde search", "temde demo", "temde ablate", "temde eval"):
        assert tuple(command.split()) in names


@pytest.mark.parametrize("command,action,defaults", list(_options()),
                         ids=lambda v: v if isinstance(v, str) else "/".join(v.option_strings)
                         if isinstance(v, argparse.Action) else "")
def test_every_option_has_help_that_states_its_default(command, action, defaults):
    assert action.help and action.help != argparse.SUPPRESS, f"{command} {action.option_strings}: no help"
    if defaults:  # flags (store_true/const) have nothing to default
        text = action.help.lower()
        assert "default" in text, \
            f"{command} {action.option_strings}: help does not say what happens without it: {action.help!r}"
        if action.default not in (None, [], argparse.SUPPRESS) and "%(default)" not in action.help:
            # a written-out default must be the real one, in the form one would type it
            shown = ",".join(map(str, action.default)) if isinstance(action.default, list) else str(action.default)
            assert shown in action.help or f"{action.default:,}" in action.help, \
                f"{command} {action.option_strings}: help names another default than {action.default!r}"


def test_every_command_has_a_description(capsys):
    for path, parser in _commands(build_parser()):
        assert parser.description, f"{' '.join(path)}: no description"


def test_top_level_help_opens_with_a_sentence_for_users(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    description = text.split("\n\n")[1].replace("\n", " ")
    assert description.startswith("Image-caption retrieval") and description.rstrip().endswith(".")
    assert "argument parsing" not in text  # the developers' note of the package is not the users' help


def test_pooling_help_names_every_registered_pooling():
    from temde.pooling import POOLS

    parsers = {tuple(path): parser for path, parser in _commands(build_parser())}
    train = parsers[("temde", "train")]
    (pooling,) = [a for a in train._actions if "--pooling" in a.option_strings]
    for name in POOLS:
        assert name in pooling.help, f"--pooling help does not name {name!r}: {pooling.help!r}"

"""The README tells every command, option and setting (issue 16, rough edge 10: several options
existed but were not in the command table). Read from the parser and the settings model, so
a new option without its line in the README fails here."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from daemonproc import REPO
from geowarn.config.settings import Settings
from geowarn.service.cli import build_parser

README = (REPO / "README.md").read_text()
TABLE_ROWS = [line for line in README.splitlines() if line.startswith("| `geowarn ")]
#: Options every command has, explained once at the top rather than in every row.
COMMON = {"--help", "--verbose", "--config", "--data-dir"}
#: Settings the README lists as one row of a group ("`GEOWARN_INFLUX_URL`, `_TOKEN`, …").
GROUPED = {"influx_token": "`_TOKEN`", "influx_org": "`_ORG`", "influx_bucket": "`_BUCKET`"}


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, path + (name,))
    if path:
        yield path, parser


def test_every_command_has_a_row_in_the_command_table_with_its_options():
    problems = []
    for path, parser in _commands(build_parser()):
        has_sub = any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
        if has_sub:
            continue  # "geowarn token": its subcommands have the rows
        cmd = "geowarn " + " ".join(path)
        rows = [r for r in TABLE_ROWS if f"`{cmd}" in r]
        if not rows:
            problems.append(f"{cmd}: no row in the README's command table")
            continue
        for action in parser._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt not in COMMON and not opt.startswith("--no-") and not any(opt in r for r in rows):
                    problems.append(f"{cmd}: {opt} not in its row")
    assert not problems, "\n".join(problems)


def test_every_setting_is_in_the_configuration_table():
    missing = [name for name in Settings.model_fields
               if f"`GEOWARN_{name.upper()}`" not in README and GROUPED.get(name, "\0") not in README]
    assert not missing, f"settings the README does not list: {missing}"

"""relayctl's help: every command and every option says what it is for, in its own words
(an operator's only manual at the terminal)."""

from __future__ import annotations

from collections.abc import Iterator

import click

from relay.cli import main


def commands(group: click.Command, path: str = "relayctl") -> Iterator[tuple[str, click.Command]]:
    yield path, group
    if isinstance(group, click.Group):
        for name, command in group.commands.items():
            yield from commands(command, f"{path} {name}")


def test_every_command_and_option_has_help() -> None:
    missing = []
    for path, command in commands(main):
        if not (command.help or "").strip():
            missing.append(path)
        for param in command.params:
            if isinstance(param, click.Option) and not (param.help or "").strip():
                missing.append(f"{path} {param.opts[-1]}")
    assert missing == []


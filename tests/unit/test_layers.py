"""The floor plan (docs/architecture.md) as import-linter contracts in pyproject.toml: no
cycles between the relay's packages and modules at any depth (TYPE_CHECKING imports
count), the stages layered in pipeline order above the queue, the runtime and the core,
and the HTTP side layered within."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]


def lint_imports(where: Path) -> subprocess.CompletedProcess[str]:
    lint = Path(sys.executable).parent / "lint-imports"
    command = str(lint) if lint.exists() else shutil.which("lint-imports")
    if command is None:
        pytest.fail("lint-imports is not installed (scripts/setup.sh --test installs it)")
    return subprocess.run([command, "--no-cache"], cwd=where, capture_output=True,
                          text=True, timeout=120, check=False)


def test_every_contract_is_kept() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "upward_import"), [
    ("relay/core/units.py", "from relay.queue import base"),       # the core knows no stage
    ("relay/queue/roles.py", "from relay.scheduler import shaping"),  # the queue, no user
    ("relay/delivery/mx.py", "from relay.feedback import tokens"),  # nor what comes back
    ("relay/smtp/auth.py", "from relay.web import gate"),  # the stages side by side
])
def test_an_import_against_the_floor_plan_breaks_a_contract(
        tmp_path: Path, module: str, upward_import: str) -> None:
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    shutil.copytree(REPO / "relay", tmp_path / "relay",
                    ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / module
    path.write_text(path.read_text() + f"\n{upward_import}  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr
    assert "BROKEN" in result.stdout


# The processes' composition roots: the main process (server), relayctl (cli) and an
# ingest worker process (smtp.worker). Everything else takes a section of the
# configuration, or values.
READS_THE_WHOLE_CONFIGURATION = ("relay.server", "relay.cli.", "relay.smtp.worker")


def test_only_the_composition_roots_take_the_whole_configuration() -> None:
    readers = []
    for path in sorted((REPO / "relay").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        if module == "relay.config":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            whole = (isinstance(node, ast.ImportFrom) and (
                (node.module == "relay.config" and any(a.name == "Config" for a in node.names))
                or (node.module == "relay" and any(a.name == "config" for a in node.names))))
            if whole:
                readers.append(module)
    assert readers, "the check found no composition root: it reads nothing"
    strays = [m for m in readers if not m.startswith(READS_THE_WHOLE_CONFIGURATION)]
    assert strays == [], f"take a section or values instead of Config: {strays}"

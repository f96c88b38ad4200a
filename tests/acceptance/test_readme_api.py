"""The README's curl examples, every endpoint of the admin API, run as written against a
running relay (only the address of its admin port and its token file differ)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from relay import config as config_module
from tests.acceptance.conftest import MakeRelay
from tests.acceptance.test_relayctl import queue_json, until

README = Path(__file__).parents[2] / "README.md"


def run(script: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """`sh -e`: a curl that fails (-f: any HTTP error) stops the script with its status."""
    ran = subprocess.run(["sh", "-e", "-c", script], cwd=directory, capture_output=True,
                         text=True, timeout=120, check=False)
    assert ran.returncode == 0, script + ran.stdout + ran.stderr
    return ran


def curl_examples() -> str:
    text = README.read_text(encoding="utf-8")
    after = text[text.index("**Every endpoint, with curl**"):]
    return re.search(r"```sh\n(.*?)```", after, re.S).group(1)  # type: ignore[union-attr]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_readme_curl_examples_run_as_written(relay_process: MakeRelay,
                                                 tmp_path: Path) -> None:
    relay = relay_process().start()
    loaded = config_module.load(relay.config)
    script = curl_examples()
    assert script.count("curl ") >= 20  # every endpoint
    script = script.replace("API=http://127.0.0.1:8025", f"API=http://{loaded.admin.listen}")
    script = script.replace("cat spool/admin.token", f"cat {loaded.admin_token_path}")
    # The two messages are sent, then (so that what follows does not depend on how soon
    # the relay tries them) the rest runs once both are deferred.
    settings, _, rest = script.partition("curl -fsS $API/healthz")
    sending, listing, rest = rest.partition('curl -fsS -H "$AUTH" "$API/v1/queue?state=deferred"')
    sent = run(settings + "curl -fsS $API/healthz" + sending + 'echo "ID=$ID"', tmp_path)
    message_id = sent.stdout.rsplit("ID=", 1)[1].strip()
    until(lambda: [m["recipients"][0]["state"] for m in queue_json(relay.config)]
          == ["deferred", "deferred"], "both messages deferred")
    ran = run(f"{settings}ID={message_id}\n{listing}{rest}", tmp_path)
    ran.stdout = sent.stdout + ran.stdout
    for answer in ('{"status":"ok"}', '"recipients":1}', '"state":"deferred"',
                   '{"held":1,"missing":[]}', '{"released":1,"missing":[]}',
                   '{"deleted":1,"missing":[]}', '"state":"cancelled"', '{"added":true}',
                   '{"removed":true}', 'relay_queue_recipients{state="deferred"}',
                   "Subject: Hello", "event: status", '"in_queue":false', '"type":"deleted"',
                   '"type":"accepted"', '"http://127.0.0.1:9/hooks"', '{"removed":1}',
                   '"name":"dashboard"', '{"revoked":1}'):
        assert answer in ran.stdout, answer
    assert (tmp_path / "openapi.json").stat().st_size > 1000
    assert relay.stop() == 0

"""schemathesis against the running relay's /openapi.json: whatever it generates for every
documented operation, the admin API answers with no 5xx."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from relay import config as config_module
from tests.acceptance.conftest import MakeRelay
from tests.support.net import free_port

SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or \
    shutil.which("schemathesis")
REPO = Path(__file__).parents[2]
pytestmark = pytest.mark.skipif(SCHEMATHESIS is None, reason="schemathesis is not installed")


@pytest.mark.timeout(450)  # the fuzzing run's own limit is 400 s
def test_schemathesis_finds_no_server_error(relay_process: MakeRelay, tmp_path: Path) -> None:
    # Whatever gets queued goes nowhere: the next hop is a loopback port nobody listens on.
    relay = relay_process(delivery={"relayhost": f"[127.0.0.2]:{free_port(('127.0.0.2',))}"},
                          smtp={"workers": 0}).start()
    config = config_module.load(relay.config)
    token = config.admin_token_path.read_text().strip()
    base = f"http://{config.admin.listen}"
    request = urllib.request.Request(base + "/openapi.json",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        spec = json.loads(response.read())
    assert {"/v1/messages", "/v1/broadcasts", "/v1/broadcasts/{broadcast_id}/events",
            "/v1/queue", "/v1/suppressions", "/metrics"} <= set(spec["paths"])
    (tmp_path / "openapi.json").write_text(json.dumps(spec))

    assert SCHEMATHESIS is not None
    result = subprocess.run(
        [SCHEMATHESIS, "run", str(tmp_path / "openapi.json"), "--url", base,
         "-H", f"Authorization: Bearer {token}", "--checks", "not_a_server_error",
         "--max-examples", "15", "--generation-deterministic", "--request-timeout", "10",
         "--phases", "examples,coverage,fuzzing",
         # A webhook endpoint it added would have the relay POST events to whatever URL
         # was generated, and a test sends traffic to loopback only.
         "--exclude-operation-id", "add_webhook_v1_webhooks_post"],
        capture_output=True, text=True, timeout=400, check=False, cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.support.schemathesis_hooks",
             "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Traceback" not in relay.log()
    assert relay.stop() == 0

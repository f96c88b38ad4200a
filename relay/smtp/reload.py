"""reload: what SIGHUP re-reads, in the main process and in every ingest worker.

The policies (`policies/*.toml`) and the SMTP TLS certificate. All or nothing: a file that
does not load is logged and the old policies and certificate stay. Open SMTP sessions and
deliveries are not touched; new ones use what was loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

from relay.core.errors import RelayError
from relay.policy import Policies, load_policies
from relay.smtp.listeners import ServerTls

log = logging.getLogger("relay")


def reload(policies_path: Path, tls: ServerTls, current: Policies) -> Policies:
    """The new policies, or `current` when anything failed to load."""
    try:
        policies = load_policies(policies_path)
        tls.reload()
    except RelayError as exc:
        log.error("reload failed, keeping the previous policies and certificate: %s", exc)
        return current
    log.info("reloaded policies from %s%s", policies_path,
             " and the TLS certificate" if tls.context is not None else "")
    return policies

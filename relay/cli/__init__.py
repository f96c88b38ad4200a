"""cli: `relayctl`, the operator's command, apart from the daemons it runs and talks to
(as Postfix keeps postqueue, postsuper and postcat apart from its daemons).

`main.py` is the command group with serve, db and hash-password; each topic has a module
of its own (configuration, queue, history and events, send, broadcast and suppression,
keys, mta_sts, integrations: API keys and webhooks), imported only when one of its
commands runs; `client.py` talks to the running relay's admin API and `support.py` holds
what every command shares.
"""

from relay.cli.main import main

__all__ = ["main"]

"""console: the operator's pages in a browser, served by the admin listener under /ui/.

Server-rendered HTML (Jinja2, console.render) with a small script of the package's own
(static/console.js: live broadcast counts) and nothing from anywhere else: it works
offline and, for reading, without JavaScript. Sign in with the admin token or an API key
with the `read` scope (console.sessions); actions need `admin`.

- Overview: queue depth by state and the oldest message's age, deliveries per minute
  over three hours, the destinations with the most deferred mail, failing webhook
  endpoints, and on PostgreSQL the nodes that hold leases.
- Queue: filters, a message's envelope, headers and timelines, and relayctl's actions.
- Broadcasts: progress that updates live; cancel.
- Suppressions: search, add, remove, by stream.
"""

from relay.web.console.routes import (
    OPEN_PATHS,
    PREFIX,
    SIGN_IN,
    Console,
    console_routes,
    is_console,
    not_found_page,
)
from relay.web.console.sessions import COOKIE, Session, Sessions

__all__ = ["COOKIE", "OPEN_PATHS", "PREFIX", "SIGN_IN", "Console", "Session", "Sessions",
           "console_routes", "is_console", "not_found_page"]

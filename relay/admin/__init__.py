"""admin: the HTTP API. `app` builds it and serves it; the routes live by topic."""

from relay.admin.app import AdminServer, Services, create_app

__all__ = ["AdminServer", "Services", "create_app"]

"""cli.client: what relayctl uses to talk to the running relay's admin API.

The URL and token come from the same configuration the relay runs with, so `relayctl`
needs no flags beyond `-c`. Failures become one-line AdminClientError messages.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Any

from relay.config import Config, split_hostport
from relay.core.errors import RelayError
from relay.secretfiles import load_or_create_token

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class AdminClientError(RelayError):
    exit_status = 2


class NotFound(AdminClientError):
    """The id asked for is not there (404): exit status 1, as postsuper's for an id that
    is not in the queue, whatever the command."""

    exit_status = 1


class AdminClient:
    def __init__(self, base_url: str, token: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = timeout

    @classmethod
    def from_config(cls, config: Config) -> AdminClient:
        host, port = split_hostport(config.admin.listen)
        host = _WILDCARDS.get(host, host)
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return cls(f"http://{netloc}", load_or_create_token(config.admin_token_path,
                                                            create=False))

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> Any:
        """A JSON request and its JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        with self._open(method, path, data, {"Content-Type": "application/json",
                                             **(headers or {})},
                        timeout=self._timeout) as response:
            return json.loads(response.read() or b"null")

    def read(self, path: str) -> bytes:
        """A GET whose answer is not JSON (a queued message), as bytes."""
        with self._open("GET", path, None, {}, timeout=self._timeout) as response:
            return bytes(response.read())

    def upload(self, path: str, chunks: Iterable[bytes], content_type: str,
               headers: dict[str, str] | None = None) -> Any:
        """POST a body sent as it is produced (chunked), and its JSON answer."""
        with self._open("POST", path, chunks, {"Content-Type": content_type,
                                               "Transfer-Encoding": "chunked",
                                               **(headers or {})},
                        timeout=None) as response:
            return json.loads(response.read() or b"null")

    def events(self, path: str) -> Iterator[dict[str, Any]]:
        """The `data:` objects of a Server-Sent Events stream, as they come."""
        with self._open("GET", path, None, {"Accept": "text/event-stream"},
                        timeout=None) as response:
            for line in response:
                if line.startswith(b"data: "):
                    yield json.loads(line[6:])

    @contextlib.contextmanager
    def _open(self, method: str, path: str, data: bytes | Iterable[bytes] | None,
              headers: dict[str, str], timeout: float | None) -> Iterator[Any]:
        """`timeout` None: as long as it takes (uploads, event streams)."""
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self._token}", **headers})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                yield response
        except urllib.error.HTTPError as exc:
            kind = NotFound if exc.code == 404 else AdminClientError
            raise kind(_describe_http_error(exc)) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminClientError(
                f"cannot reach the relay at {self.base_url}: {reason} (is it running?)"
            ) from exc


def _describe_http_error(exc: urllib.error.HTTPError) -> str:
    try:
        error = json.loads(exc.read())["error"]
        named = error.get("field") and exc.code != 404  # "no message X": X is the id
        field = f" ({error['field']})" if named else ""
        return f"{error['message']}{field}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {exc.code} {exc.reason}"

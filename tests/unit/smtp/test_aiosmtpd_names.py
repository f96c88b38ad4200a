"""The private names of aiosmtpd that relay.smtp.protocol relies on are still there, in the shape
it uses them: a new aiosmtpd that renames or reshapes one fails here, not in production.
(pyproject.toml pins aiosmtpd to the versions tested.)"""

from __future__ import annotations

import asyncio
import inspect

import aiosmtpd.smtp
import pytest
from aiosmtpd.smtp import SMTP

# name -> (parameters after self, a coroutine function)
METHODS = {
    "_reset_timeout": (["duration"], False),  # overridden: the idle timer
    "_set_post_data_state": ([], False),  # called after DATA
    "_call_handler_hook": (["command", "args"], True),  # called for DATA's hook
    "_getaddr": (["arg"], False),  # overridden: the fast path for plain addresses
    "_create_session": ([], False),  # overridden: RelaySession
    "_authenticate": (["mechanism", "auth_data"], False),  # overridden: AUTH off the loop
    "_handle_client": ([], True),  # looks sanitized_log up in the module on every call
}
# Set by SMTP.__init__ (or connection_made) and read or replaced by relay.smtp.protocol.
ATTRIBUTES = ("_timeout_handle", "_timeout_duration", "_tls_protocol",
              "_original_transport", "_smtp_methods", "_auth_methods")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_methods_are_there_with_their_parameters(name: str) -> None:
    method = getattr(SMTP, name)
    parameters, coroutine = METHODS[name]
    assert list(inspect.signature(method).parameters)[1:] == parameters
    assert inspect.iscoroutinefunction(method) is coroutine


def test_the_attributes_are_set_where_relay_reads_them() -> None:
    loop = asyncio.new_event_loop()
    try:
        protocol = SMTP(object(), loop=loop)
        for name in ATTRIBUTES:
            assert hasattr(protocol, name), name
        assert isinstance(protocol._smtp_methods, dict)
        assert isinstance(protocol._auth_methods, dict)
    finally:
        loop.close()
    assert "self._reader" in inspect.getsource(SMTP.connection_made)
    assert "sanitized_log(" in inspect.getsource(SMTP._handle_client)


def test_auth_mechanisms_and_the_log_function_keep_their_shape() -> None:
    assert aiosmtpd.smtp._AuthMechAttr._fields == ("method", "is_builtin")
    parameters = inspect.signature(aiosmtpd.smtp.sanitized_log).parameters
    assert list(parameters)[:2] == ["func", "msg"]
    import relay.smtp.protocol  # noqa: F401 (it replaces sanitized_log when imported)

    assert aiosmtpd.smtp.sanitized_log.__module__ == "relay.smtp.protocol"

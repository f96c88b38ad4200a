"""templates: one template, many recipients, each message rendered when it is sent.

A template is a structured message (relay.cleanup.compose) whose from, subject, text, html, header
values and `unsubscribe_url` may hold `{{field}}` placeholders. A recipient is an address
and its fields. `check_recipient` runs at submission, so a bad recipient is rejected with a
reason while the others are accepted; `render` runs at delivery time and builds that
recipient's message: values are HTML-escaped in `html`, URL-encoded in `unsubscribe_url`,
a CR or LF in a value becomes a space before it can reach a header, and a field the
recipient lacks is an error (it was checked at submission), never a silent blank. With
`unsubscribe_url`, every message carries `List-Unsubscribe` and
`List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
"""

from __future__ import annotations

import email.charset
import email.policy
import functools
import html
import json
import re
import urllib.parse
from collections.abc import Mapping
from email.header import Header
from email.headerregistry import Address
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator

from relay.cleanup.compose import (
    ComposeError,
    OneLine,
    StructuredMessage,
    Tracked,
    compose,
    mailbox,
)

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}")
MAX_FIELD_LENGTH = 10_000


class Template(Tracked):
    """The part of a broadcast that is stored once."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: OneLine = Field(alias="from", min_length=3)
    reply_to: OneLine | None = None
    subject: OneLine = ""
    text: str | None = None
    html: str | None = None
    headers: dict[str, OneLine] = Field(default_factory=dict)
    unsubscribe_url: OneLine | None = None  # e.g. "https://x.example/u?e={{email}}"

    @field_validator("headers")
    @classmethod
    def _header_names(cls, headers: dict[str, str]) -> dict[str, str]:
        # the same rules as for one message
        StructuredMessage.model_validate({"from": "a@b.example", "headers": headers})
        for value in headers.values():
            _placeholders_closed(value)
        return headers

    @field_validator("from_", "reply_to", "subject", "text", "html", "unsubscribe_url")
    @classmethod
    def _closed(cls, text: str | None) -> str | None:
        return _placeholders_closed(text) if text is not None else None

    def fields(self) -> frozenset[str]:
        """Every field the template refers to."""
        texts = [self.from_, self.reply_to or "", self.subject, self.text or "",
                 self.html or "", self.unsubscribe_url or "", *self.headers.values()]
        return frozenset(name for text in texts for name in _PLACEHOLDER.findall(text))


def _placeholders_closed(text: str) -> str:
    """`text`, or ValueError where a `{{` does not start a well-formed {{field}}: sent as
    it is, it would reach every recipient."""
    rest = _PLACEHOLDER.sub("", text)
    start = rest.find("{{")
    if start >= 0:
        raise ValueError(f"{rest[start:start + 24]!r} is not a placeholder: write "
                         "{{field}}, a field name of letters, digits, '_', '.' or '-'")
    return text


class Recipient(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str
    fields: dict[str, str | int | float | bool] = {}


def check_recipient(template_fields: frozenset[str], recipient: Any) -> tuple[str, str] | str:
    """(address, fields as JSON-ready text values) or the reason it cannot be sent."""
    try:
        parsed = Recipient.model_validate(recipient)
    except ValueError as exc:
        return f"not a recipient object: {str(exc).splitlines()[-1].strip()}"
    try:
        address = mailbox(parsed.email, "email").addr_spec
    except ComposeError as exc:
        return str(exc)
    values = {"email": address, **{k: _text(v) for k, v in parsed.fields.items()}}
    missing = sorted(template_fields - values.keys())
    if missing:
        return f"missing field{'s' if len(missing) > 1 else ''}: {', '.join(missing)}"
    if any(len(v) > MAX_FIELD_LENGTH for v in values.values()):
        return f"a field is longer than {MAX_FIELD_LENGTH} characters"
    return address, _fields_json(values)


def _text(value: str | int | float | bool) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _fields_json(values: dict[str, str]) -> str:
    return json.dumps(values, ensure_ascii=False, separators=(",", ":"))


def envelope_sender(template: Template) -> tuple[str, bool]:
    """The broadcast's MAIL FROM (the address in `from`) and whether it needs SMTPUTF8. Its
    display name may hold fields; the address may not, the envelope being one for all."""
    address = mailbox(_PLACEHOLDER.sub("field", template.from_), "from").addr_spec
    if address != mailbox(_PLACEHOLDER.sub("other", template.from_), "from").addr_spec:
        raise ComposeError("from", "the From address may not hold {{fields}} (its "
                           "display name may)")
    return address, not address.isascii()


def render(template: Template, fields: Mapping[str, str]) -> tuple[str, bytes, bool]:
    """(envelope sender, message bytes, needs SMTPUTF8) for one recipient."""
    def one_line(text: str) -> str:
        return _substitute(text, fields, lambda v: " ".join(v.splitlines()))

    display_name, sender = _sender(template.from_)
    headers = {name: one_line(value) for name, value in template.headers.items()}
    if template.unsubscribe_url:
        url = _substitute(template.unsubscribe_url, fields, _in_url)
        headers["List-Unsubscribe"] = f"<{url}>"
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    text = (_substitute(template.text, fields, lambda v: v)
            if template.text is not None else None)
    html_text = (_substitute(template.html, fields, html.escape)
                 if template.html is not None else None)
    name = one_line(display_name)
    reply_to = one_line(template.reply_to) if template.reply_to else None
    if not (fields["email"].isascii() and sender.isascii()):
        # UTF-8 addresses need the modern API's SMTPUTF8 policy (rare; slower).
        message = StructuredMessage.model_construct(
            from_=str(Address(display_name=name, addr_spec=sender)), to=[fields["email"]],
            cc=[], bcc=[], reply_to=reply_to, subject=one_line(template.subject), text=text,
            html=html_text, headers=headers, attachments=[])
        composed = compose(message)
        return composed.mail_from, composed.data, composed.smtputf8
    mime = _mime_body(text, html_text)
    mime["From"] = formataddr((name, sender), charset="utf-8")
    mime["To"] = fields["email"]
    if reply_to:
        mime["Reply-To"] = _header_value(reply_to)
    mime["Subject"] = _header_value(one_line(template.subject))
    for header, value in headers.items():
        mime[header] = _header_value(value)
    return sender, mime.as_bytes(policy=_WIRE), False


# One message per recipient of a million: the email package's classic API builds it about
# 6x faster than EmailMessage, whose policy parses every address header it is given.
_WIRE = email.policy.compat32.clone(linesep="\r\n")
_UTF8 = email.charset.Charset("utf-8")
_UTF8.header_encoding = _UTF8.body_encoding = email.charset.QP


def _mime_body(text: str | None, html_text: str | None) -> Message:
    # (typeshed has the charset as a str; the classic API documents a Charset as well)
    parts = [MIMEText(_lf(body), subtype, cast(str, _UTF8))
             for body, subtype in ((text, "plain"), (html_text, "html")) if body is not None]
    if len(parts) == 1:
        return parts[0]
    alternative = MIMEMultipart("alternative")
    for part in parts:
        del part["MIME-Version"]  # only the top level carries it
        alternative.attach(part)
    return alternative


def _header_value(value: str) -> str:
    """As is, or as RFC 2047 encoded words (a Header, which Message takes as a value)."""
    return value if value.isascii() else cast(str, Header(value, _UTF8))


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


@functools.lru_cache(maxsize=256)
def _sender(from_: str) -> tuple[str, str]:
    """The display name (still with its fields) and the address of a template's From."""
    parsed = mailbox(from_, "from")
    return parsed.display_name, parsed.addr_spec


def _in_url(value: str) -> str:
    """A value as a URL's query or path takes it: percent-encoded (RFC 3986), so that a
    '+' is not read as a space and '&', '=', '#' or CR LF cannot end or add a parameter;
    '@' stays, as pchar allows it (an address reads as one)."""
    return urllib.parse.quote(value, safe="@")


def _substitute(text: str, fields: Mapping[str, str], escape: Any) -> str:
    def value(match: re.Match[str]) -> str:
        return str(escape(fields[match.group(1)]))  # KeyError: checked at submission

    return _PLACEHOLDER.sub(value, text)

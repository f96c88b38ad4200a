"""broadcast: one template, many recipients, each message rendered when it is sent.

A template is a structured message (relay.compose) whose from, subject, text, html, header
values and `unsubscribe_url` may hold `{{field}}` placeholders. A recipient is an address
and its fields. `check_recipient` runs at submission, so a bad recipient is rejected with a
reason while the others are accepted; `render` runs at delivery time and builds that
recipient's message: values are HTML-escaped in `html`, a CR or LF in a value becomes a
space before it can reach a header, and a field the recipient lacks is an error (it was
checked at submission), never a silent blank. With `unsubscribe_url`, every message carries
`List-Unsubscribe` and `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from email.headerregistry import Address
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from relay.compose import (
    ComposeError,
    OneLine,
    StructuredMessage,
    compose,
    mailbox,
)

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}")
MAX_FIELD_LENGTH = 10_000


class Template(BaseModel):
    """The part of a broadcast that is stored once."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: OneLine = Field(alias="from", min_length=3)
    reply_to: OneLine | None = None
    subject: OneLine = ""
    text: str | None = None
    html: str | None = None
    headers: dict[str, OneLine] = {}
    unsubscribe_url: OneLine | None = None  # e.g. "https://x.example/u?e={{email}}"

    @field_validator("headers")
    @classmethod
    def _header_names(cls, headers: dict[str, str]) -> dict[str, str]:
        # the same rules as for one message
        StructuredMessage.model_validate({"from": "a@b.example", "headers": headers})
        return headers

    def fields(self) -> frozenset[str]:
        """Every field the template refers to."""
        texts = [self.from_, self.reply_to or "", self.subject, self.text or "",
                 self.html or "", self.unsubscribe_url or "", *self.headers.values()]
        return frozenset(name for text in texts for name in _PLACEHOLDER.findall(text))


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
    def plain(text: str) -> str:
        return _substitute(text, fields, lambda v: v)

    def one_line(text: str) -> str:
        return _substitute(text, fields, lambda v: " ".join(v.splitlines()))

    headers = {name: one_line(value) for name, value in template.headers.items()}
    if template.unsubscribe_url:
        headers["List-Unsubscribe"] = f"<{one_line(template.unsubscribe_url)}>"
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    # The display name is rendered alone and then quoted as needed, so that a value with
    # ":" or "<" stays a name.
    sender = mailbox(template.from_, "from")
    sender = Address(display_name=one_line(sender.display_name), addr_spec=sender.addr_spec)
    message = StructuredMessage.model_construct(
        from_=str(sender), to=[fields["email"]], cc=[], bcc=[],
        reply_to=one_line(template.reply_to) if template.reply_to else None,
        subject=one_line(template.subject),
        text=plain(template.text) if template.text is not None else None,
        html=(_substitute(template.html, fields, html.escape)
              if template.html is not None else None),
        headers=headers, attachments=[])
    composed = compose(message)
    return composed.mail_from, composed.data, composed.smtputf8


def _substitute(text: str, fields: Mapping[str, str], escape: Any) -> str:
    def value(match: re.Match[str]) -> str:
        return str(escape(fields[match.group(1)]))  # KeyError: checked at submission

    return _PLACEHOLDER.sub(value, text)

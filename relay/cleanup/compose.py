"""compose: RFC 5322 messages from the admin API's JSON, with the standard `email` package.

`POST /v1/messages` takes a structured message (from, to, cc, bcc, subject, text, html,
headers, attachments) or a raw one (RFC 5322 text plus envelope). A structured message
becomes text/plain, text/html, multipart/alternative for both, and multipart/mixed around
that when there are attachments; non-ASCII header text becomes encoded words (RFC 2047),
non-ASCII bodies UTF-8 with a transfer encoding that keeps lines short. Bcc is envelope
only. Either shape then goes through cleanup, like mail that came by SMTP.

Validation errors name the field (`to[2]`, `headers.X-Tag`, `attachments[0].content`), so
the API can answer 422 with it. A CR or LF never reaches a header.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import json
import re
from email import errors
from email.headerregistry import Address, HeaderRegistry
from email.message import EmailMessage
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from relay.core.addresses import address_problem
from relay.queue import MAX_METADATA, Tracking
from relay.queue.base import STREAM_PATTERN, TRANSACTIONAL

# Headers the API sets itself, or that describe the MIME structure it builds.
RESERVED_HEADERS = frozenset({
    "from", "to", "cc", "bcc", "subject", "mime-version", "content-type",
    "content-transfer-encoding", "received",
})
MAX_RECIPIENTS = 1000
_POLICY = email.policy.SMTP.clone(max_line_length=78)
_UTF8_POLICY = email.policy.SMTPUTF8.clone(max_line_length=78)
_HEADERS = HeaderRegistry()

# A plain ASCII addr-spec (dot-atom local part, a domain with a dot); anything else goes
# through the email package's RFC 5322 parser.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_SIMPLE_ADDRESS = re.compile(rf"({_ATOM}(?:\.{_ATOM})*)@({_LABEL}(?:\.{_LABEL})+)")

ONE_LINE = r"^[^\r\n]*$"
# type/subtype, each an RFC 2045 token: "-" included (application/octet-stream).
MIME_TYPE = r"^[!#-'*+\-.0-9A-Z^-~]+/[!#-'*+\-.0-9A-Z^-~]+$"
# What a value that does not match one of the patterns above is told.
PATTERN_MEANINGS = {ONE_LINE: "cannot contain line breaks",
                    MIME_TYPE: "is not a MIME type such as text/plain"}
OneLine = Annotated[str, StringConstraints(pattern=ONE_LINE, max_length=998)]


TagName = Annotated[str, StringConstraints(pattern=r"^[!-~]{1,64}$")]
MAX_TAGS = 20
StreamName = Annotated[str, StringConstraints(pattern=STREAM_PATTERN)]


class Tracked(BaseModel):
    """What an application may attach to a message for its history and events: a small
    JSON object and a few tags (no spaces, up to 64 characters each); and the stream it
    belongs to, whose suppression list it obeys (lower case, digits, `.`, `_`, `-`)."""

    metadata: dict[str, Any] | None = None
    tags: list[TagName] = Field(default=[], max_length=MAX_TAGS)
    stream: StreamName | None = None

    @field_validator("metadata")
    @classmethod
    def _small(cls, metadata: dict[str, Any] | None) -> dict[str, Any] | None:
        if metadata is not None and len(json.dumps(metadata)) > MAX_METADATA:
            raise ValueError(f"metadata is over {MAX_METADATA} characters of JSON")
        return metadata

    def tracking(self, subject: str = "", api_key: str = "",
                 stream: str = TRANSACTIONAL) -> Tracking:
        """`stream`: the default when the request names none."""
        return Tracking(subject, self.metadata, tuple(self.tags), api_key,
                        self.stream or stream)


class ComposeError(ValueError):
    """Input that cannot become a message; `field` says which part of the request."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Attachment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: OneLine = Field(min_length=1)
    content_type: Annotated[str, StringConstraints(pattern=MIME_TYPE, max_length=255)] = (
        "application/octet-stream")
    content: str  # base64

    def decoded(self, index: int) -> bytes:
        try:
            return base64.b64decode(self.content, validate=True)
        except (binascii.Error, ValueError):
            raise ComposeError(f"attachments[{index}].content", "not valid base64") from None


class StructuredMessage(Tracked):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: OneLine = Field(alias="from", min_length=3)
    to: list[OneLine] = []
    cc: list[OneLine] = []
    bcc: list[OneLine] = []
    reply_to: OneLine | None = None
    subject: OneLine = ""
    text: str | None = None
    html: str | None = None
    headers: dict[str, OneLine] = {}
    attachments: list[Attachment] = []

    @field_validator("headers")
    @classmethod
    def _header_names(cls, headers: dict[str, str]) -> dict[str, str]:
        for name in headers:
            if not name or any(not 33 <= ord(c) <= 126 or c == ":" for c in name):
                raise ValueError(f"header name {name!r} is not a valid field name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name} is set by the message's own fields")
        return headers


class RawMessage(Tracked):
    model_config = ConfigDict(extra="forbid")

    mail_from: OneLine  # "" for the null sender
    rcpt_to: list[OneLine] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    raw: str = Field(min_length=1)


class Composed(BaseModel):
    """What cleanup takes: the envelope and the message bytes."""

    mail_from: str
    recipients: list[str]
    data: bytes
    smtputf8: bool


def mailbox(value: str, field: str) -> Address:
    """One address, with or without a display name; ComposeError naming `field`."""
    simple = _SIMPLE_ADDRESS.fullmatch(value)
    if simple is not None:  # the usual case, 50x cheaper than the full RFC 5322 parser
        return _checked(Address(username=simple.group(1), domain=simple.group(2)), value,
                        field)
    try:
        header = _HEADERS("To", value)
        addresses = header.addresses  # type: ignore[attr-defined]
        # UTF-8 local parts are fine: such mail goes out with SMTPUTF8 (RFC 6531).
        defects = [d for d in header.defects
                   if not isinstance(d, errors.NonASCIILocalPartDefect)]
    except (ValueError, IndexError):
        addresses, defects = (), [errors.InvalidHeaderDefect()]
    if len(addresses) != 1 or defects or not _plausible(addresses[0]):
        raise ComposeError(field, f"{value!r} is not an email address")
    address: Address = addresses[0]
    return _checked(address, value, field)


def _checked(address: Address, value: str, field: str) -> Address:
    problem = address_problem(address.addr_spec)
    if problem is not None:
        raise ComposeError(field, f"{value!r} is not an email address: {problem}")
    return address


def _plausible(address: Address) -> bool:
    domain = address.domain
    return (bool(address.username) and ("." in domain or domain == "localhost")
            and " " not in address.addr_spec)


def compose(message: StructuredMessage) -> Composed:
    sender = mailbox(message.from_, "from")
    to = [mailbox(v, f"to[{i}]") for i, v in enumerate(message.to)]
    cc = [mailbox(v, f"cc[{i}]") for i, v in enumerate(message.cc)]
    bcc = [mailbox(v, f"bcc[{i}]") for i, v in enumerate(message.bcc)]
    recipients = [a.addr_spec for a in to + cc + bcc]
    if not recipients:
        raise ComposeError("to", "give at least one recipient in to, cc or bcc")
    if len(recipients) > MAX_RECIPIENTS:
        raise ComposeError("to", f"at most {MAX_RECIPIENTS} recipients per message")
    if message.text is None and message.html is None and not message.attachments:
        raise ComposeError("text", "give text, html or attachments")

    smtputf8 = not all(a.addr_spec.isascii() for a in [sender, *to, *cc, *bcc])
    mime = EmailMessage(policy=_UTF8_POLICY if smtputf8 else _POLICY)
    mime["From"] = sender
    if to:
        mime["To"] = to
    if cc:
        mime["Cc"] = cc
    if message.reply_to:
        mime["Reply-To"] = mailbox(message.reply_to, "reply_to")
    mime["Subject"] = message.subject
    for name, value in message.headers.items():
        mime[name] = value
    _set_body(mime, message)
    data = mime.as_bytes()
    return Composed(mail_from=sender.addr_spec, recipients=recipients, data=data,
                    smtputf8=smtputf8)


def _set_body(mime: EmailMessage, message: StructuredMessage) -> None:
    if message.text is not None:
        mime.set_content(_crlf_free(message.text))
        if message.html is not None:
            mime.add_alternative(_crlf_free(message.html), subtype="html")
    elif message.html is not None:
        mime.set_content(_crlf_free(message.html), subtype="html")
    for index, attachment in enumerate(message.attachments):
        maintype, _, subtype = attachment.content_type.partition("/")
        mime.add_attachment(attachment.decoded(index), maintype=maintype, subtype=subtype,
                            filename=attachment.filename)


def _crlf_free(text: str) -> str:
    """Bodies in the API are text with \\n or \\r\\n line ends; email writes CRLF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def raw_message(message: RawMessage) -> Composed:
    sender = "" if message.mail_from in ("", "<>") else mailbox(
        message.mail_from, "mail_from").addr_spec
    recipients = [mailbox(v, f"rcpt_to[{i}]").addr_spec for i, v in enumerate(message.rcpt_to)]
    data = message.raw.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
    # SMTPUTF8 for UTF-8 addresses or header fields; an 8-bit body needs only 8BITMIME.
    header_section = message.raw.replace("\r\n", "\n").partition("\n\n")[0]
    smtputf8 = not (header_section.isascii() and sender.isascii()
                    and all(r.isascii() for r in recipients))
    return Composed(mail_from=sender, recipients=recipients, data=data, smtputf8=smtputf8)

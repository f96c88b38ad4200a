"""cleanup.compose: the API's structured and raw messages as RFC 5322, read back with the
standard parser; errors that name the field."""

from __future__ import annotations

import base64
import email
import email.policy

import pytest

from relay.cleanup.compose import (
    ComposeError,
    RawMessage,
    StructuredMessage,
    compose,
    raw_message,
)


def parsed(data: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def test_text_and_html_are_alternatives_and_bcc_is_envelope_only() -> None:
    composed = compose(StructuredMessage.model_validate({
        "from": "App <app@sender.test>", "to": ["a@example.test"], "cc": ["b@example.test"],
        "bcc": ["hidden@example.test"], "subject": "Grüße", "text": "hi\n", "html": "<p>hi</p>",
        "headers": {"X-Tag": "t1"}}))
    assert composed.mail_from == "app@sender.test" and not composed.smtputf8
    assert composed.recipients == ["a@example.test", "b@example.test", "hidden@example.test"]
    message = parsed(composed.data)
    assert message["Subject"] == "Grüße" and message["X-Tag"] == "t1"
    assert message["Bcc"] is None and b"hidden@" not in composed.data
    assert message.get_content_type() == "multipart/alternative"
    assert b"\r\n" in composed.data and b"Gr\xc3\xbc" not in composed.data  # 7-bit headers


def test_attachments_make_a_mixed_message_with_the_bytes_given() -> None:
    content = bytes(range(256))
    composed = compose(StructuredMessage.model_validate({
        "from": "app@sender.test", "to": ["a@example.test"], "text": "see attached",
        "attachments": [{"filename": "data.bin", "content_type": "application/octet-stream",
                         "content": base64.b64encode(content).decode()}]}))
    message = parsed(composed.data)
    assert message.get_content_type() == "multipart/mixed"
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "data.bin" and attachment.get_content() == content


def test_a_utf8_address_needs_smtputf8() -> None:
    composed = compose(StructuredMessage.model_validate(
        {"from": "app@sender.test", "to": ["josé@example.test"], "text": "x"}))
    assert composed.smtputf8 and composed.recipients == ["josé@example.test"]


@pytest.mark.parametrize(("message", "field"), [
    ({"from": "app@sender.test", "to": ["nope"], "text": "x"}, "to[0]"),
    ({"from": "app@sender.test", "cc": ["a@example.test", "b@@x"], "text": "x"}, "cc[1]"),
    ({"from": "not an address", "to": ["a@example.test"], "text": "x"}, "from"),
    ({"from": "app@sender.test", "text": "x"}, "to"),
    ({"from": "app@sender.test", "to": ["a@example.test"]}, "text"),
])
def test_what_cannot_be_a_message_names_the_field(message: dict[str, object],
                                                   field: str) -> None:
    with pytest.raises(ComposeError) as refused:
        compose(StructuredMessage.model_validate(message))
    assert refused.value.field == field


def test_a_reserved_or_broken_header_name_is_refused() -> None:
    for headers in ({"Content-Type": "text/plain"}, {"Bad Name": "x"}, {"X:Y": "x"}):
        with pytest.raises(ValueError):
            StructuredMessage.model_validate({"from": "app@sender.test", "headers": headers})


def test_a_raw_message_gets_crlf_line_ends_and_its_envelope() -> None:
    composed = raw_message(RawMessage.model_validate({
        "mail_from": "<>", "rcpt_to": ["a@example.test"],
        "raw": "Subject: raw\nFrom: x@sender.test\n\nline\n"}))
    assert composed.mail_from == "" and composed.recipients == ["a@example.test"]
    assert composed.data == b"Subject: raw\r\nFrom: x@sender.test\r\n\r\nline\r\n"

"""cleanup.templates: a broadcast's template checked once, each recipient's fields
checked, and each copy rendered with its values escaped for where they land."""

from __future__ import annotations

import email
import email.policy
import json

import pytest

from relay.cleanup.compose import ComposeError
from relay.cleanup.templates import Template, check_recipient, envelope_sender, render

TEMPLATE = Template.model_validate({
    "from": "{{team}} <news@sender.test>", "subject": "Hello {{name}}",
    "text": "Dear {{ name }},\nyour code is {{code}}.\n",
    "html": "<p>Dear {{name}}</p>", "headers": {"X-Campaign": "{{campaign}}"},
    "unsubscribe_url": "https://sender.test/u?e={{email}}&c={{campaign}}"})


def rendered(**fields: str) -> email.message.EmailMessage:
    _, data, _ = render(TEMPLATE, {"email": "ann@example.test", **fields})
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def test_the_template_knows_every_field_it_refers_to() -> None:
    assert TEMPLATE.fields() == {"team", "name", "code", "campaign", "email"}


def test_a_recipient_needs_every_field_and_a_real_address() -> None:
    fields = TEMPLATE.fields()
    address, values = check_recipient(fields, {"email": "Ann@Example.test", "fields": {
        "team": "T", "name": "Ann", "code": 7, "campaign": "c1"}})
    assert address == "Ann@Example.test"
    assert json.loads(values)["code"] == "7"
    assert check_recipient(fields, {"email": "ann@example.test", "fields": {"name": "A"}}
                           ) == "missing fields: campaign, code, team"
    assert "not an email address" in str(check_recipient(fields, {"email": "nope"}))
    assert str(check_recipient(fields, ["not", "an", "object"])).startswith(
        "not a recipient object")


def test_values_are_escaped_for_where_they_land() -> None:
    message = rendered(team="Ops", name="<b>Ann</b>\r\nBcc: x@evil.test", code="42",
                       campaign="spring sale&more")
    assert message["Subject"] == "Hello <b>Ann</b> Bcc: x@evil.test"  # one line, no header
    assert message["Bcc"] is None
    html = message.get_body(("html",))
    text = message.get_body(("plain",))
    assert html is not None and text is not None
    assert "&lt;b&gt;Ann&lt;/b&gt;" in html.get_content()
    assert "your code is 42." in text.get_content()
    # Values are quoted as a query's values ("@" may stay: RFC 3986's pchar).
    assert message["List-Unsubscribe"].strip() == (
        "<https://sender.test/u?e=ann@example.test&c=spring%20sale%26more>")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["From"].addresses[0].display_name == "Ops"


def test_the_envelope_sender_is_one_for_every_copy() -> None:
    assert envelope_sender(TEMPLATE) == ("news@sender.test", False)
    varying = Template.model_validate({"from": "{{who}}@sender.test", "text": "x"})
    with pytest.raises(ComposeError) as refused:
        envelope_sender(varying)
    assert refused.value.field == "from"


def test_an_unclosed_placeholder_is_refused_when_the_template_comes_in() -> None:
    with pytest.raises(ValueError):
        Template.model_validate({"from": "news@sender.test", "text": "Dear {{name"})

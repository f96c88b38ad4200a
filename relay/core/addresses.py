"""addresses: what an envelope address may be, checked where mail comes in (SMTP's MAIL and
RCPT, every address of the API) and again before delivery, so that an address that cannot
exist is refused at once instead of being retried for days.

- No control characters (NUL, CR, LF, ...): they would reach the remote server's command
  line and our logs (RFC 5321 section 4.1.2 allows none).
- A local part, an `@` and a domain; a quoted local part is closed, and `<`, `>` and
  unquoted spaces appear nowhere (section 4.1.2).
- The domain is an address literal (`[192.0.2.1]`, `[IPv6:...]`, section 4.1.3) or a DNS
  name: no empty label, labels of at most 63 octets, at most 253 octets in all, in their
  A-label form for internationalized names (RFC 1035 section 2.3.4, RFC 5890).
- A path is at most 256 octets (section 4.5.3.1.3).
"""

from __future__ import annotations

import functools
import ipaddress
import re

import dns.exception
import dns.name

MAX_PATH = 256
MAX_DOMAIN = 253
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?\Z")


def address_problem(address: str) -> str | None:
    """Why `address` (local@domain) cannot be an envelope address, or None."""
    if _CONTROL.search(address):
        return "control character in address"
    if len(address.encode("utf-8")) > MAX_PATH - 2:
        return f"address longer than {MAX_PATH - 2} octets"
    local, at, domain = address.rpartition("@")
    if not at or not local:
        return "not local-part@domain"
    if local.startswith('"'):
        if len(local) < 2 or not local.endswith('"') or local.endswith('\\"'):
            return "unterminated quoted local part"
    elif '"' in local or " " in local:
        return "quote or space in an unquoted local part"
    if "<" in local or ">" in local:
        return "angle bracket in the local part"
    return domain_problem(domain)


@functools.lru_cache(maxsize=4096)
def domain_problem(domain: str) -> str | None:
    """Why `domain` cannot be a mail domain, or None. Cached: mail goes to few domains,
    and dnspython's parse was a twentieth of the CPU a message costs (bench/README.md)."""
    if domain.startswith("["):
        inner = domain[1:-1]
        if not domain.endswith("]") or not is_ip(inner.removeprefix("IPv6:")):
            return f"invalid address literal {domain}"
        return None
    if not domain:
        return "empty domain"
    try:
        ascii_name = dns.name.from_text(domain).to_text(omit_final_dot=True)
    except dns.name.EmptyLabel:
        return "empty label in domain"
    except dns.name.LabelTooLong:
        return "domain label longer than 63 octets"
    except dns.name.NameTooLong:
        return f"domain longer than {MAX_DOMAIN} octets"
    except (dns.exception.DNSException, UnicodeError, ValueError):
        return "domain not valid in DNS"
    if domain.endswith("."):
        return "domain ends with a dot"
    if len(ascii_name) > MAX_DOMAIN:
        return f"domain longer than {MAX_DOMAIN} octets"
    if not all(_LABEL.match(label) for label in ascii_name.split(".")):
        return "domain has characters a host name cannot have"
    return None


_SELECTOR_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def dkim_key_name_problem(domain: str, selector: str) -> str | None:
    """Why `domain` and `selector` cannot name a DKIM key record (RFC 6376 3.1:
    `selector._domainkey.domain`), or None."""
    problem = "an address literal" if domain.startswith("[") else domain_problem(domain)
    if problem:
        return f"domain {domain!r}: {problem}"
    if not all(_SELECTOR_LABEL.match(label) for label in selector.split(".")):
        return (f"selector {selector!r}: letters, digits and inner hyphens only, in labels "
                "of up to 63 separated by dots")
    if len(f"{selector}._domainkey.{domain}") > MAX_DOMAIN:
        return f"{selector}._domainkey.{domain} is longer than {MAX_DOMAIN} octets"
    return None


def printable(text: str) -> str:
    """`text` with control characters escaped (\\x00, \\r), for log lines."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: repr(m.group(0))[1:-1], text)


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True

"""The operator's console in a real browser: Debian's chromium, headless, driven by
Selenium, against `relayctl serve` with a real DNS server and an SMTP sink."""

from __future__ import annotations

import os
import re
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from relay import config as config_module
from tests.support.dns_server import DnsServer
from tests.support.net import free_port
from tests.support.process import RelayProcess
from tests.support.relayconf import write_relay_config
from tests.support.sink import Sink

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
HOSTILE = "<img src=x onerror=alert(1)>"
WAIT = 30  # seconds for the browser to see a change


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory: Path = tmp_path_factory.mktemp("console")
    dns = DnsServer()
    dns.start()
    port = free_port(("127.0.0.2",))
    sink = Sink("127.0.0.2", port).start()
    dns.add("example.test", "A", "127.0.0.2")
    config = write_relay_config(directory, dns.address, port, {"smtp": {"workers": 1}})
    relay = RelayProcess(config, directory / "relay.log").start()
    try:
        yield Site(relay, sink)
    finally:
        relay.kill()
        sink.stop()
        dns.stop()


class Site:
    """The relay, its admin API and the sink that plays every recipient's MX."""

    def __init__(self, relay: RelayProcess, sink: Sink) -> None:
        loaded = config_module.load(relay.config)
        self.relay, self.sink = relay, sink
        self.token = loaded.admin_token_path.read_text().strip()
        self.url = f"http://{loaded.admin.listen}"
        self.api = httpx.Client(base_url=self.url, timeout=30,
                                headers={"Authorization": f"Bearer {self.token}"})

    def send(self, to: str, subject: str = "hello", **extra: Any) -> str:
        answer = self.api.post("/v1/messages", json={
            "from": "app@sender.test", "to": [to], "subject": subject, "text": "hi",
            **extra})
        assert answer.status_code == 202, answer.text
        queue_id: str = answer.json()["id"]
        return queue_id

    def until(self, path: str, accept: Any, timeout: float = WAIT) -> Any:
        """GET `path` from the API until `accept(json)`; then that json."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.api.get(path)
            if found.status_code == 200 and accept(found.json()):
                return found.json()
            assert time.monotonic() < deadline, f"{path}: {found.text}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: run scripts/setup.sh --test")
        pytest.skip("chromium and chromium-driver are not installed "
                    "(scripts/setup.sh --test installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium")
    # The machine has no network beyond loopback: nothing in the background may try it.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--window-size=1280,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def signed_in(site: Site, browser: WebDriver, tmp_path: Path) -> WebDriver:
    browser.delete_all_cookies()
    browser.get(f"{site.url}/ui/")
    assert browser.current_url.endswith("/ui/sign-in")  # no session: the sign-in page
    shoot(browser, tmp_path, "sign-in")
    browser.find_element(By.ID, "token").send_keys(site.token)
    click(browser, "form button[type=submit]")
    assert browser.current_url.endswith("/ui/")
    return browser


def shoot(browser: WebDriver, directory: Path, name: str) -> None:
    """A screenshot into the test's directory, checked not to be one flat colour."""
    path = directory / f"{name}.png"
    assert browser.save_screenshot(str(path))
    assert len(set(png_pixels(path.read_bytes())[::61])) > 8, f"{name} looks blank"


def png_pixels(png: bytes) -> bytes:
    """The decompressed image data of a PNG (filter bytes and all): enough to tell a page
    from an empty one."""
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    position, data = 8, b""
    while position < len(png):
        (length,) = struct.unpack(">I", png[position:position + 4])
        kind = png[position + 4:position + 8]
        if kind == b"IDAT":
            data += png[position + 8:position + 8 + length]
        position += 12 + length
    return zlib.decompress(data)


def click(browser: WebDriver, selector: str) -> None:
    """Click what leads to another page, and wait until the browser shows that page,
    loaded: reading the old one, or the new one half built, would be a race."""
    before = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.CSS_SELECTOR, selector).click()
    WebDriverWait(browser, WAIT).until(lambda _: replaced(before))
    WebDriverWait(browser, WAIT).until(
        lambda b: b.execute_script("return document.readyState;") == "complete")


def replaced(element: WebElement) -> bool:
    """Whether the page that held `element` is gone. While it is being replaced, Chromium's
    driver may say that the node "does not belong to the document" instead of calling it
    stale: both mean the same."""
    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" not in str(exc):
            raise
        return True
    return False


def text_of(browser: WebDriver) -> str:
    """The page's text, read in one step in the page (no element handle to go stale)."""
    return str(browser.execute_script("return document.body.innerText;"))


def ran_no_script(browser: WebDriver) -> None:
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 (the property raises if there is none)
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == [], errors


def test_a_deferred_message_its_timeline_hold_and_release(
        site: Site, signed_in: WebDriver, tmp_path: Path) -> None:
    browser = signed_in
    site.sink.rcpt_replies["later@example.test"] = "451 4.3.0 come back later"
    queue_id = site.send("later@example.test", subject="waiting for the console")
    site.until(f"/v1/queue/{queue_id}",
               lambda m: m["recipients"][0]["state"] == "deferred")
    browser.get(f"{site.url}/ui/")
    assert "example.test" in text_of(browser)  # among the most deferred destinations
    shoot(browser, tmp_path, "overview")

    browser.get(f"{site.url}/ui/queue?state=deferred")
    click(browser, f"a[href='/ui/queue/{queue_id}']")
    page = text_of(browser)
    assert "waiting for the console" in page and "451 4.3.0 come back later" in page
    assert "accepted" in page and "deferred" in page  # the recipient's timeline
    shoot(browser, tmp_path, "message")

    click(browser, "button[value=hold]")
    assert "1 recipient(s) held." in text_of(browser)
    assert site.api.get(f"/v1/queue/{queue_id}").json()["recipients"][0]["state"] == "held"
    click(browser, "button[value=release]")
    assert "1 recipient(s) released." in text_of(browser)
    assert site.api.get(f"/v1/queue/{queue_id}").json()["recipients"][0]["state"] != "held"

    browser.get(f"{site.url}/ui/queue?state=deferred&domain=example.test&sender=app&age=0")
    shoot(browser, tmp_path, "queue")
    click(browser, f"a[href='/ui/queue/{queue_id}']")
    click(browser, "a.danger")  # delete asks first
    assert "Delete message" in text_of(browser)
    click(browser, "button.danger")
    assert f"Message {queue_id} deleted." in text_of(browser)
    assert site.api.get(f"/v1/queue/{queue_id}").status_code == 404
    ran_no_script(browser)


def test_a_broadcasts_counts_rise_without_reloading(
        site: Site, signed_in: WebDriver, tmp_path: Path) -> None:
    browser = signed_in
    waiting = site.sink.waiting_at_data
    gate = site.sink.data_gate = threading.Event()
    try:
        answer = site.api.post("/v1/broadcasts", json={
            "from": "news@sender.test", "subject": "news", "text": "hello {{name}}",
            "recipients": [{"email": f"reader{n}@example.test", "fields": {"name": "x"}}
                           for n in range(5)]})
        assert answer.status_code == 202, answer.text
        broadcast_id = answer.json()["id"]
        browser.get(f"{site.url}/ui/broadcasts")
        row = f"tr[data-broadcast='{broadcast_id}']"
        assert browser.find_element(By.CSS_SELECTOR, f"{row} [data-count=delivered]"
                                    ).text == "0"
        browser.execute_script("window.notReloaded = true;")
        site.sink.wait_at_gate(waiting + 1)  # sending, held at DATA
        late = site.api.post("/v1/broadcasts", json={
            "from": "news@sender.test", "subject": "late news", "text": "hi",
            "recipients": [{"email": f"late{n}@example.test"} for n in range(3)]}).json()["id"]
        browser.get(f"{site.url}/ui/broadcasts")
        click(browser, f"tr[data-broadcast='{late}'] button.danger")
        assert f"Broadcast {late} cancelled." in text_of(browser)
        assert site.api.get(f"/v1/broadcasts/{late}").json()["state"] == "cancelled"
        browser.execute_script("window.notReloaded = true;")
    finally:
        gate.set()
    WebDriverWait(browser, WAIT).until(lambda b: b.find_element(
        By.CSS_SELECTOR, f"{row} [data-count=delivered]").text == "5")
    assert browser.execute_script("return window.notReloaded === true;")
    assert browser.find_element(By.CSS_SELECTOR, f"{row} progress"
                                ).get_attribute("value") == "5"
    shoot(browser, tmp_path, "broadcasts")
    site.sink.data_gate = None
    ran_no_script(browser)


def test_a_suppression_is_found_added_and_removed(
        site: Site, signed_in: WebDriver, tmp_path: Path) -> None:
    browser = signed_in
    browser.get(f"{site.url}/ui/suppressions")
    browser.find_element(By.CSS_SELECTOR, "form.add input[name=address]").send_keys(
        "gone@example.test")
    stream = browser.find_element(By.CSS_SELECTOR, "form.add input[name=stream]")
    stream.clear()
    stream.send_keys("news")
    click(browser, "form.add button")
    assert "Suppression added." in text_of(browser)
    listed = site.api.get("/v1/suppressions", params={"stream": "news"}).json()
    assert [s["address"] for s in listed["suppressions"]] == ["gone@example.test"]
    browser.get(f"{site.url}/ui/suppressions?q=gone&stream=news")
    shoot(browser, tmp_path, "suppressions")
    click(browser, "button[aria-label='remove gone@example.test (news)']")
    assert "Suppression removed." in text_of(browser)
    assert site.api.get("/v1/suppressions").json()["suppressions"] == []


def test_what_came_from_mail_or_the_api_is_text(
        site: Site, signed_in: WebDriver, tmp_path: Path) -> None:
    browser = signed_in
    site.sink.rcpt_replies["hostile@example.test"] = f"451 4.3.0 {HOSTILE}"
    queue_id = site.send("hostile@example.test", subject=HOSTILE,
                         metadata={"note": "<script>alert(2)</script>"})
    site.until(f"/v1/queue/{queue_id}",
               lambda m: m["recipients"][0]["state"] == "deferred")
    answer = site.api.post("/v1/broadcasts", json={
        "from": "news@sender.test", "subject": HOSTILE, "text": "hi",
        "metadata": {"campaign": "<svg onload=alert(3)>"},
        "recipients": [{"email": "hostile@example.test"}]})  # deferred: it stays queued
    assert answer.status_code == 202, answer.text
    for path in (f"/ui/queue/{queue_id}", "/ui/queue", "/ui/broadcasts",
                 f"/ui/queue/{answer.json()['id']}"):
        browser.get(f"{site.url}{path}")
        ran_no_script(browser)
        assert browser.find_elements(By.CSS_SELECTOR, "main img, main svg[onload]") == []
    browser.get(f"{site.url}/ui/queue/{queue_id}")
    page = text_of(browser)
    assert HOSTILE in page and "<script>alert(2)</script>" in page
    browser.get(f"{site.url}/ui/queue/{answer.json()['id']}")  # the broadcast's own page
    page = text_of(browser)
    assert HOSTILE in page and "<svg onload=alert(3)>" in page
    shoot(browser, tmp_path, "hostile")


def test_no_session_no_page_and_no_form_without_its_token(site: Site,
                                                          signed_in: WebDriver) -> None:
    with httpx.Client(base_url=site.url, timeout=30) as anonymous:
        page = anonymous.get("/ui/queue")
        assert page.status_code == 303 and page.headers["location"] == "/ui/sign-in"
        assert anonymous.get("/ui/sign-in").status_code == 200
        assert anonymous.post("/ui/suppressions", data={"address": "a@b.test"}
                              ).status_code == 401
        assert anonymous.get("/ui/static/console.js").status_code == 303
        wrong = anonymous.post("/ui/sign-in", data={"token": "not-the-token"})
        assert wrong.status_code == 401 and "neither" in wrong.text
    cookie = signed_in.get_cookie("relay_console")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    with httpx.Client(base_url=site.url, timeout=30,
                      cookies={"relay_console": cookie["value"]}) as session:
        assert session.get("/ui/queue").status_code == 200
        refused = session.post("/ui/suppressions", data={"address": "a@b.test"})
        assert refused.status_code == 403 and refused.json()["error"]["field"] == "csrf"
        forged = session.post("/ui/suppressions", data={"address": "a@b.test",
                                                        "csrf": "guessed"})
        assert forged.status_code == 403
        elsewhere = session.post("/ui/sign-out", headers={"Origin": "http://evil.test"})
        assert elsewhere.status_code == 403
    # A script uses the bearer header instead, and needs no CSRF token.
    assert site.api.get("/ui/queue").status_code == 200
    assert site.api.post("/ui/suppressions", data={"address": "script@example.test"}
                         ).status_code == 303
    assert site.api.post("/ui/suppressions/remove",
                         data={"address": "script@example.test"}).status_code == 303


def test_a_read_key_sees_pages_but_cannot_act(site: Site, browser: WebDriver) -> None:
    created = site.api.post("/v1/apikeys", json={"name": "viewer", "scopes": ["read"]})
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    with httpx.Client(base_url=site.url, timeout=30) as client:
        signed = client.post("/ui/sign-in", data={"token": key})
        assert signed.status_code == 303
        page = client.get("/ui/suppressions").text
        assert 'class="filters add"' not in page  # no form it could not use
        csrf = page.split('name="csrf" value="')[1].split('"')[0]
        refused = client.post("/ui/suppressions", data={"address": "a@b.test", "csrf": csrf})
        assert refused.status_code == 403  # the admin scope is missing
        send_only = site.api.post("/v1/apikeys", json={"name": "sender", "scopes": ["send"]})
        assert client.post("/ui/sign-in", data={"token": send_only.json()["key"]}
                           ).status_code == 401


def test_the_console_is_in_the_package_and_offline() -> None:
    console = Path(__file__).parents[2] / "relay" / "console"
    for page in (console / "templates").glob("*.html"):
        text = page.read_text()
        assert "http://" not in text and "https://" not in text, page  # nothing from elsewhere


WIDTHS = (1366, 420)  # a laptop, a phone
# A single word per element that must stay whole: headers, counts, states, buttons.
_BROKEN_WORDS = """
const broken = [];
for (const el of document.querySelectorAll("th, td.n, .state, td[data-count], button")) {
  const text = el.textContent.trim();
  if (!text || /\\s/.test(text)) continue;
  const range = document.createRange();
  range.selectNodeContents(el);
  const lines = new Set([...range.getClientRects()].map((r) => Math.round(r.top)));
  if (lines.size > 1) broken.push(text);
}
return broken;
"""


def test_every_page_reads_at_a_laptops_and_a_phones_width(
        site: Site, signed_in: WebDriver, tmp_path: Path) -> None:
    """Each page at 1366 and 420 px: nothing wider than the window (wide tables scroll in
    their own box), no word broken in the middle, dates instead of epochs; screenshots
    of each are in the test's directory."""
    browser = signed_in
    slow = [f"waiting{n}@example.test" for n in range(30)]
    for address in slow:
        site.sink.rcpt_replies[address] = "451 4.3.0 a reply long enough to need some room"
    answer = site.api.post("/v1/messages", json={
        "from": "app@sender.test", "to": slow, "subject": "many recipients", "text": "hi"})
    many = answer.json()["id"]
    site.until(f"/v1/queue/{many}", lambda m: all(r["state"] == "deferred"
                                                    for r in m["recipients"]))
    cancelled = site.api.post("/v1/broadcasts", json={
        "from": "news@sender.test", "subject": "later", "text": "hi",
        "recipients": [{"email": address} for address in slow[:3]]}).json()["id"]
    site.api.post(f"/v1/broadcasts/{cancelled}/cancel")
    pages = {"overview": "/ui/", "queue": "/ui/queue?state=deferred",
             "message": f"/ui/queue/{many}", "broadcasts": "/ui/broadcasts",
             "broadcast": f"/ui/queue/{cancelled}", "suppressions": "/ui/suppressions",
             "bulk": "/ui/queue/act?action=hold&state=deferred", "missing": "/ui/nowhere"}
    try:
        for width in WIDTHS:
            browser.set_window_size(width, 1000)
            assert browser.execute_script("return window.innerWidth;") <= width
            for name, path in pages.items():
                browser.get(f"{site.url}{path}")
                shoot(browser, tmp_path, f"{name}-{width}")
                overflow = browser.execute_script(
                    "const e = document.documentElement; return e.scrollWidth - e.clientWidth;")
                assert overflow <= 0, f"{name} at {width} px is {overflow} px too wide"
                assert browser.execute_script(_BROKEN_WORDS) == [], (name, width)
                assert not re.search(r"\b1[789]\d{8}\.\d+", text_of(browser)), (name, width)
    finally:
        browser.set_window_size(1280, 1000)
    browser.get(f"{site.url}/ui/nowhere")
    assert "Not found" in text_of(browser) and browser.find_elements(By.LINK_TEXT, "Queue")
    browser.get_log("browser")  # read, and so emptied: the 404s just asked for

    browser.get(f"{site.url}/ui/broadcasts")
    row = f"tr[data-broadcast='{cancelled}']"
    bar = browser.find_element(By.CSS_SELECTOR, f"{row} progress")
    assert bar.get_attribute("value") == "0"  # nothing sent (the sink defers them all)
    counts = site.api.get(f"/v1/broadcasts/{cancelled}").json()
    assert browser.find_element(By.CSS_SELECTOR, f"{row} [data-count=state]"
                                ).text == counts["state"] == "cancelled"
    cell = browser.find_element(By.CSS_SELECTOR, f"{row} [data-count=cancelled]")
    assert cell.text == str(counts["cancelled"])
    assert browser.find_element(By.CSS_SELECTOR, f"{row} [data-count=rejected]").text == "0"
    browser.get(f"{site.url}/ui/queue?state=deferred")
    assert "and 20 more" in text_of(browser)
    site.api.post("/v1/queue/delete", json={"ids": [many]})
    ran_no_script(browser)

"""The admin console (issue 16, item 3), used as a person would: headless
Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by
selenium) against a running gateway with real SIP (SIPp as carrier and
agent phone), real Postgres and a real webhook receiver. Screenshots of
each step go to ``$GATEWAY_SCREENSHOTS`` (else the test's tmp dir).

Selenium blocks, and the gateway runs on this test's event loop: every
browser step runs in a thread (``Browser.do``)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from gateway.domain.live_calls import LiveCalls
from gateway.domain.routing import Decision
from gateway.server import Gateway
from gateway.store import demo
from gateway.store.api_keys import create_key
from gateway.store.calls import CallRecord, write_calls
from gateway.store.index_queries import fetch_number
from tests.gateway_process import GatewayProcess
from tests.sipp_tools import CARRIER_IP, PHONE_IP, start_sipp
from tests.test_crm import Api
from tests.test_event_webhooks import Receiver
from tests.test_sip_calls import NUMBER, agent_number, sip_target

pytestmark = pytest.mark.timeout(180)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
T = TypeVar("T")


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[WebDriver]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("the console tests need Debian's chromium and chromium-driver (.ci/run installs them)")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1280,1500", f"--user-data-dir={tmp_path / 'chromium'}",
    ):  # fmt: skip
        options.add_argument(flag)
    # The path to chromedriver is given, so selenium never looks one up on the network.
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield browser
    finally:
        browser.quit()


class Browser:
    """A person at the console: finds things by their labels and names."""

    def __init__(self, driver: WebDriver, base: str, shots: Path) -> None:
        self.driver = driver
        self.base = base
        self.shots = shots
        self.taken = 0

    async def do(self, step: Callable[[WebDriver], T]) -> T:
        return await asyncio.to_thread(step, self.driver)

    async def until(self, check: Callable[[WebDriver], Any], what: str, limit_s: float = 10) -> Any:
        # The live table re-renders from the event stream, so an element found
        # a moment ago may be replaced before its text is read: look again.
        wait = WebDriverWait(
            self.driver, limit_s, poll_frequency=0.05,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        )  # fmt: skip
        return await asyncio.to_thread(wait.until, check, f"not within {limit_s}s: {what}")

    async def shot(self, name: str) -> None:
        self.taken += 1
        await self.do(lambda d: d.save_screenshot(str(self.shots / f"{self.taken:02d}-{name}.png")))

    async def text(self, selector: str) -> str:
        return await self.do(lambda d: d.find_element(By.CSS_SELECTOR, selector).text)

    async def field(self, label: str) -> WebElement:
        """The form control a visible <label> names (as a screen reader would)."""
        element = await self.do(lambda d: d.execute_script(_FIELD_LABELLED, label))
        assert element is not None, f"no visible field labelled {label!r}"
        return element  # type: ignore[no-any-return]

    async def press(self, name: str) -> None:
        """Click the visible button whose accessible name is ``name`` (found
        and clicked again if the page re-rendered it in between)."""

        def click(d: WebDriver) -> bool:
            button = d.execute_script(_BUTTON_NAMED, name)
            if button is None:
                return False
            button.click()
            return True

        await self.until(click, f"a button named {name!r}")

    async def type_into(self, label: str, text: str, clear: bool = True) -> WebElement:
        element = await self.field(label)

        def type_it(d: WebDriver) -> None:
            if clear:
                element.clear()
            element.send_keys(text)

        await self.do(type_it)
        return element

    async def alert(self) -> str:
        return await self.until(lambda d: d.find_element(By.ID, "alert").is_displayed() and
                                d.find_element(By.ID, "alert").text, "an error shown")  # fmt: skip

    async def shows(self, selector: str, text: str) -> None:
        """Wait until the element ``selector`` finds holds ``text``."""
        await self.until(
            lambda d: text in d.find_element(By.CSS_SELECTOR, selector).text, f"{selector}: {text!r}"
        )

    async def said(self, fragment: str) -> None:
        await self.until(lambda d: fragment in d.find_element(By.ID, "status").text, f"status {fragment!r}")


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("GATEWAY_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def test_an_owner_runs_the_account_from_the_console(
    hooks_sip_gw: Gateway, conn: asyncpg.Connection, driver: WebDriver, shots: Path, tmp_path: Path
) -> None:
    acct, phone_port, number_id = await agent_number(hooks_sip_gw, conn)
    await conn.execute("UPDATE users SET name = 'Olive Owner' WHERE id = $1", acct.owner_id)
    owner_key = await create_key(conn, acct.id, acct.owner_id)
    agent_key = await create_key(conn, acct.id, acct.agent_id)
    owner = Api(hooks_sip_gw, owner_key)
    async with Receiver() as crm:
        status, _ = await owner.call("POST", "/v1/webhook-endpoints", json={"url": crm.url})
        assert status == 201
        # An unknown caller nobody answered: an open R8 notification for the owner.
        await conn.execute("UPDATE numbers SET source = 'Open house', tag = 'oh' WHERE id = $1", number_id)
        number = await fetch_number(conn, number_id)
        assert number is not None
        at = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
        unanswered = CallRecord(
            "console-1@carrier", "inbound", number, "+15550142222", number.e164, at, at, "no_answer",
            Decision("unknown_caller", "single", (acct.owner_id,), (), 20),
        )  # fmt: skip
        async with conn.transaction():
            await write_calls(conn, [unanswered])
        await crm.wait_for(2)  # call.ended, notification.created

        page = Browser(driver, f"http://127.0.0.1:{hooks_sip_gw.http_port}", shots)
        await page.do(lambda d: d.get(page.base + "/console"))
        focused = "the key field focused"
        await page.until(lambda d: d.switch_to.active_element.get_attribute("id") == "api-key", focused)

        # An unknown key, then an agent's key: each refusal shows the problem's detail.
        await page.type_into("API key", "gk_not-a-key\n")
        assert "the API key is unknown or revoked" in await page.alert()
        await page.type_into("API key", agent_key + Keys.ENTER)
        await page.until(lambda d: "owner and admins" in d.find_element(By.ID, "alert").text, "agent refused")
        await page.shot("agent-refused")
        assert not await page.do(lambda d: d.find_element(By.ID, "console").is_displayed())

        # The owner signs in with the keyboard alone.
        await page.type_into("API key", owner_key + Keys.ENTER)
        await page.until(lambda d: d.find_element(By.ID, "console").is_displayed(), "the console")
        await page.said("Signed in")
        assert "Olive Owner (owner)" in await page.text("#whoami")
        await page.shows("#numbers-table", NUMBER)
        unlabelled = await page.do(lambda d: d.execute_script(_UNLABELLED_CONTROLS))
        assert unlabelled == [], f"form controls without a label: {unlabelled}"
        await page.shot("signed-in")

        # A number's setting: the API's error is shown at the field, then a good value is saved.
        await page.press(f"Edit {NUMBER}")
        limit = await page.type_into("Concurrent call limit", "0")
        await page.press("Save")
        assert "max_concurrent_calls" in await page.alert()
        assert await page.do(lambda d: limit.get_attribute("aria-invalid")) == "true"
        await page.shot("number-error")
        await page.type_into("Concurrent call limit", "7")
        await page.type_into("Lead source", "Billboard")
        await page.press("Save")
        await page.said(f"Saved {NUMBER}")
        row = await conn.fetchrow("SELECT max_concurrent_calls, source FROM numbers WHERE id = $1", number_id)
        assert tuple(row) == (7, "Billboard")
        assert "Billboard" in await page.text("#numbers-table")
        live_row = f'#live-table tr[data-number-id="{number_id}"]'
        await page.shows(live_row, "0 of 7")

        # A live call appears (from the event stream, no reload) and disappears.
        agent = await start_sipp("agent", "uas_agent.xml", tmp_path, ip=PHONE_IP, port=phone_port)
        caller = await start_sipp(
            "caller", "uac_dialog.xml", tmp_path, ip=CARRIER_IP, remote=sip_target(hooks_sip_gw),
            service=NUMBER, pause_ms=3000,
        )  # fmt: skip
        await page.shows(live_row, "1 of 7")
        await page.shows(live_row, "answered")
        await page.shot("live-call")
        assert await caller.wait(20) == 0, caller.errors()
        assert await agent.wait(20) == 0, agent.errors()
        await page.shows(live_row, "0 of 7")
        assert await page.do(lambda d: d.find_elements(By.CSS_SELECTOR, f"{live_row} li")) == []

        # The open notification, settled as a new lead with the source the number had when it rang (R8).
        await page.shows("#notifications", "+15550142222")
        await page.shot("notification")
        await page.press("New lead from +15550142222")
        await page.said("+15550142222 is now lead")
        lead = await conn.fetchrow(
            "SELECT l.source, n.state FROM notifications n JOIN leads l ON l.id = n.lead_id"
            " WHERE n.call_record_id IS NOT NULL AND n.number_id = $1",
            number_id,
        )
        assert (lead["source"], lead["state"]) == ("Open house", "closed")
        assert "No open notifications" in await page.text("#notifications-table")

        # Usage per user against the package, and the webhook deliveries with a redeliver.
        usage = await page.text("#usage-table")
        assert "Olive Owner (owner)" in usage and "upgraded" in usage
        await crm.wait_for(4)  # + call.ended of the SIPp call, lead.created_from_notification
        await page.press("Refresh deliveries")
        await page.shows("#deliveries-table", "lead.created_from_notification")
        assert "delivered" in await page.text("#deliveries-table")
        await page.shot("deliveries")
        received = len(crm.received)
        await page.press(await page.do(_first_redeliver_name))
        await page.said("is queued again")
        await crm.wait_for(received + 1)

        # The key is revoked: the console shows the API's refusal rather than stale data.
        await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE user_id = $1", acct.owner_id)
        await page.press("Refresh notifications")
        assert "the API key is unknown or revoked" in await page.alert()
        await page.shot("revoked")
    print(f"console screenshots: {shots}")


def _first_redeliver_name(d: WebDriver) -> str:
    first = d.find_element(By.CSS_SELECTOR, "#deliveries-table tbody button")
    return first.get_attribute("aria-label") or ""


_BUTTON_NAMED = """
return [...document.querySelectorAll('button')].find((b) => b.offsetParent !== null
  && (b.getAttribute('aria-label') || b.textContent.trim()) === arguments[0]) || null;
"""
_FIELD_LABELLED = """
const label = [...document.querySelectorAll('label')].find((l) => l.offsetParent !== null
  && l.textContent.trim() === arguments[0]);
return label ? label.control : null;
"""
_UNLABELLED_CONTROLS = """
return [...document.querySelectorAll('input, select, textarea, button')]
  .filter((e) => e.offsetParent !== null)
  .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
  .map((e) => e.outerHTML);
"""


async def test_live_calls_are_for_managers_and_follow_the_board(
    gateway: Gateway, conn: asyncpg.Connection
) -> None:
    """The console's two reads over plain HTTP: an agent gets 403; the stream
    sends the board at once and again when a call starts and ends."""
    from tests import factories

    acct = await factories.account(conn)
    number_id = await factories.number(conn, acct.id, "+15550143333")
    owner = Api(gateway, await create_key(conn, acct.id, acct.owner_id))
    agent = Api(gateway, await create_key(conn, acct.id, acct.agent_id))
    assert (await agent.call("GET", "/v1/live-calls"))[0] == 403
    assert (await owner.call("GET", "/v1/live-calls")) == (200, {"numbers": []})
    status, me = await owner.call("GET", "/v1/me")
    assert status == 200
    assert (me["user_id"], me["role"], me["account_id"]) == (acct.owner_id, "owner", acct.id)

    live: LiveCalls = gateway.live_calls
    headers = {"Authorization": f"Bearer {owner.headers['Authorization'].split()[1]}"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.get(f"{owner.base}/v1/live-calls/stream") as stream,
    ):
        assert stream.status == 200

        async def next_board() -> dict[str, Any]:
            import json

            async with asyncio.timeout(5):
                while True:
                    line = (await stream.content.readline()).decode()
                    if line.startswith("data: "):
                        board: dict[str, Any] = json.loads(line[6:])
                        return board

        assert await next_board() == {"numbers": []}
        call = live.started(acct.id, number_id, "+15550144444", 1_800_000_000.0)
        live.started(acct.id + 10_000, number_id, "+15550145555", 1_800_000_000.0)  # another account's
        board = await next_board()
        [entry] = board["numbers"]
        assert (entry["number_id"], entry["active"]) == (number_id, 1)
        assert (entry["calls"][0]["caller"], entry["calls"][0]["state"]) == ("+15550144444", "ringing")
        live.answered(call, 1_800_000_003.0)
        assert (await next_board())["numbers"][0]["calls"][0]["state"] == "answered"
        live.ended(call)
        assert await next_board() == {"numbers": []}


async def test_the_console_of_a_gateway_serve_process(
    db_dsn: str, conn: asyncpg.Connection, driver: WebDriver, shots: Path, tmp_path: Path
) -> None:
    """The console as deployed: `gateway serve`, the demo account's owner key."""
    key = (await demo.seed(conn))[-1].rsplit(" ", 1)[1]
    env = {
        "GATEWAY_DATABASE_URL": db_dsn,
        "GATEWAY_OUTBOX_DIR": str(tmp_path / "outbox"),
        "GATEWAY_SIP_PORT": "0",
    }
    served = GatewayProcess(env, tmp_path)
    await served.start()
    try:
        await served.routable()
        page = Browser(driver, f"http://127.0.0.1:{served.http_port}", shots)
        await page.do(lambda d: d.get(page.base + "/console/"))  # the trailing slash redirects
        await page.type_into("API key", key + Keys.ENTER)
        await page.said("Signed in")
        for number in (demo.COMPANY_NUMBER, demo.OFFICE_NUMBER):
            await page.shows("#live-table", number)
        await page.shows("#live-state", "Live")
        assert "0 of 50" in await page.text("#live-table")
        await page.shot("gateway-serve")
        async with aiohttp.ClientSession() as session, session.get(page.base + "/console") as response:
            assert "script-src 'self';" in response.headers["Content-Security-Policy"]
        served.terminate()
        assert await served.wait() == 0
    finally:
        await served.close()

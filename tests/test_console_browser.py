"""The console in a real headless Chromium (Debian's, through Selenium) against a running stack
with quiet hours off: sign-in with a code read from the sandboxes, triage settlement reaching the
worker's chat, a broadcast from the composer, figures and their CSV, jurisdiction, hostile appeal
text, CSRF, and every page at phone width."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from adapters.telegram import SANDBOX_TOKENS as SANDBOX_TELEGRAM_TOKENS
from gateway.domain.city import Worker
from tests.browser import PHONE_WIDTH, as_phone, chromium
from tests.conftest import Stack, http_json, wait_for
from tests.test_broadcast_stack import running_stack
from tests.test_case_lifecycle import PLACE, WORKER, bot_messages, case_of, sms_appeal, wait_bot
from tests.test_sms_flow import CITY, SMS_PATH
from tests.twilio_client import inbound_form, post

pytestmark = pytest.mark.slow

RESIDENT_TOKEN, WORKER_TOKEN = SANDBOX_TELEGRAM_TOKENS
DESK = [w for w in CITY.workers.values() if w.role == "dept_staff" and w.department_code == "GRID_CENTER"]
COMMUNITY = next(g.code for g in CITY.lineage(PLACE.grid_code) if g.level == 2)
OFFICER = next(w for w in CITY.workers.values() if w.role == "community_officer" and w.grid_code == COMMUNITY)
OUTSIDER = next(w for w in CITY.workers.values() if w.role == "community_officer" and w.grid_code != COMMUNITY)
LEADER = next(w for w in CITY.workers.values() if w.role == "street_officer")
SESSIONS: dict[str, str] = {}  # worker id → session cookie, so each signs in by code once per module


@pytest.fixture(scope="module")
def cstack(tmp_path_factory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("console-home"), GRIDLINE_QUIET_HOURS="",
                       GRIDLINE_WEB_PROCESSES="1") as running:
        # The first appeal waits for a worker to load the classifier: not what any test measures.
        post(running.settings, SMS_PATH, inbound_form("+8617199000600", "有件事想反映", running.settings))
        running.wait_sent("+8617199000600", timeout=120)
        yield running


@pytest.fixture
def browser(tmp_path) -> Iterator[WebDriver]:
    with chromium(tmp_path) as driver:
        yield driver


def wait(driver: WebDriver, condition, timeout: float = 30):
    return WebDriverWait(driver, timeout).until(condition)


def latest_code(stack: Stack, who: Worker) -> str | None:
    if who.telegram_chat_id:
        texts = [m.get("text", "") for m in bot_messages(stack, WORKER_TOKEN, who.telegram_chat_id)]
    else:
        texts = [m["body"] for m in stack.sent_to(who.phone)]
    codes = [m.group(1) for text in texts if (m := re.search(r"sign-in code (\d{6})", text))]
    return codes[-1] if codes else None


def sign_in(driver: WebDriver, stack: Stack, who: Worker) -> None:
    """By phone and a one-time code read from the sandbox the code went to (once per worker)."""
    if who.id in SESSIONS:
        driver.get(f"{stack.url}/console/signin")
        driver.add_cookie({"name": "gridline_session", "value": SESSIONS[who.id], "path": "/console"})
        driver.get(f"{stack.url}/console/")
        wait(driver, EC.presence_of_element_located((By.ID, "sign-out")))
        return
    before = latest_code(stack, who)
    driver.get(f"{stack.url}/console/signin")
    driver.find_element(By.ID, "phone").send_keys(who.phone.removeprefix("+86"))  # typed as people do
    driver.find_element(By.ID, "send-code").click()
    wait(driver, EC.presence_of_element_located((By.ID, "code")))
    code = wait_for(lambda: (c := latest_code(stack, who)) != before and c, 30, 0.2, what="a sign-in code")
    driver.find_element(By.ID, "code").send_keys(code)
    driver.find_element(By.ID, "verify").click()
    wait(driver, EC.presence_of_element_located((By.ID, "sign-out")))
    SESSIONS[who.id] = driver.get_cookie("gridline_session")["value"]


def test_a_triage_settlement_reaches_the_worker(cstack, browser):
    number = sms_appeal(cstack, "+8617199000601", "有件事想反映，不知道找谁")
    desk = next(w for w in DESK if w.telegram_chat_id)
    sign_in(browser, cstack, desk)
    assert browser.current_url.endswith("/console/triage")
    card = browser.find_element(By.ID, f"case-{number}")
    Select(card.find_element(By.CSS_SELECTOR, "select[name=category]")).select_by_value("sanitation")
    Select(card.find_element(By.CSS_SELECTOR, "select[name=grid]")).select_by_value(PLACE.grid_code)
    card.find_element(By.CSS_SELECTOR, "button.assign").click()
    notice = wait(browser, EC.presence_of_element_located((By.ID, "notice")))
    assert number in notice.text and "✓" in notice.text
    alert = wait_bot(cstack, WORKER_TOKEN, WORKER.telegram_chat_id, number)
    assert "accept:" + number in str(alert["reply_markup"])
    assert browser.find_elements(By.ID, f"case-{number}") == []  # off the desk
    case = case_of(cstack, number)
    assert (case["assigned_worker"], case["history"][-1]["actor"]) == (WORKER.id, f"operator:{desk.id}")


def test_a_community_officer_sends_a_notice_from_the_composer(cstack, browser):
    elderly = [r for r in CITY.residents.values() if "elderly" in r.tags and CITY.within(r.grid_code, COMMUNITY)]
    assert elderly
    marker = "体检通知-7731"
    sign_in(browser, cstack, OFFICER)
    browser.get(f"{cstack.url}/console/broadcasts")
    browser.find_element(By.ID, "title").send_keys("老人免费体检")
    browser.find_element(By.ID, "tag-elderly").click()
    browser.find_element(By.ID, "text_zh").send_keys(f"{{name}}您好，{marker}：周六上午社区为老人免费体检。")
    browser.find_element(By.ID, "text_en").send_keys(f"Dear {{name}}, {marker}: free check-up on Saturday.")
    browser.find_element(By.ID, "preview").click()
    recipients = wait(browser, EC.presence_of_element_located((By.ID, "recipients")))
    assert int(recipients.text) == len(elderly)
    expression = browser.find_element(By.ID, "expression").text
    assert "tag:elderly" in expression and f"grid:{COMMUNITY}" in expression
    assert marker in browser.find_element(By.CSS_SELECTOR, ".samples").text
    browser.find_element(By.ID, "emergency").click()
    browser.find_element(By.ID, "send").click()  # an emergency without its confirmation ticked
    assert "confirmation" in wait(browser, EC.presence_of_element_located((By.ID, "error"))).text
    browser.find_element(By.ID, "emergency").click()
    browser.find_element(By.ID, "preview").click()
    wait(browser, EC.presence_of_element_located((By.ID, "recipients")))
    browser.find_element(By.ID, "send").click()
    wait(browser, EC.url_matches(r"/console/broadcasts/\d+$"))
    wait(browser, EC.text_to_be_present_in_element((By.ID, "b-state"), "done"), timeout=90)
    for resident in elderly:
        if resident.telegram_chat_id:
            got = [m for m in bot_messages(cstack, RESIDENT_TOKEN, resident.telegram_chat_id)
                   if marker in m.get("text", "")]
        else:
            got = [m for m in cstack.sent_to(resident.phone) if marker in m["body"]]
        assert len(got) == 1, (resident.id, got)
    everyone = http_json("GET", f"{cstack.sandbox_url}/_sandbox/messages")[1]["messages"]
    assert sum(marker in m["body"] for m in everyone) == sum(1 for r in elderly if not r.telegram_chat_id)


def test_a_leader_reads_the_figures_and_downloads_the_csv(cstack, browser, tmp_path):
    sign_in(browser, cstack, LEADER)
    browser.get(f"{cstack.url}/console/figures")
    for chart in ("chart-on-time", "chart-satisfaction", "chart-overdue", "chart-daily"):
        assert browser.find_element(By.ID, chart).tag_name == "svg"
    assert "Asia/Shanghai" in browser.find_element(By.TAG_NAME, "footer").text
    drill = browser.find_elements(By.CSS_SELECTOR, "a.drill")
    if drill:  # the street → community drill-down, when the street has cases
        drill[0].click()
        wait(browser, EC.url_contains("level=community"))
    browser.find_element(By.ID, "csv-units").click()
    downloaded = wait_for(lambda: [p for p in tmp_path.glob("*.csv")], 30, 0.2, what="the CSV download")
    rows = list(csv.DictReader(io.StringIO(downloaded[0].read_text(encoding="utf-8-sig"))))
    assert rows and rows[-1]["name"] == "合计" and "on_time_rate" in rows[0]


def test_another_communitys_officer_cannot_see_or_act_on_a_case(cstack, browser):
    number = sms_appeal(cstack, "+8617199000602", f"{PLACE.name}门口垃圾堆了三天没人清理")
    sign_in(browser, cstack, OUTSIDER)
    browser.get(f"{cstack.url}/console/cases/{number}")
    assert f"no case {number}" in browser.find_element(By.ID, "refusal").text
    browser.get(f"{cstack.url}/console/cases?q={number}")
    assert number not in browser.find_element(By.ID, "cases").text
    csrf = browser.find_element(By.NAME, "csrf").get_attribute("value")
    status = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(arguments[0], {method: "POST", body: new URLSearchParams({csrf: arguments[1], text: "x"})})
          .then(r => done(r.status));""", f"/console/cases/{number}/note", csrf)
    assert status == 404
    issued = cstack.gridline("operator", "token", OUTSIDER.id)
    headers = {"Authorization": f"Bearer {issued.stdout.strip()}"}
    assert http_json("GET", f"{cstack.url}/api/cases/{number}", headers=headers)[0] == 404
    assert http_json("POST", f"{cstack.url}/api/cases/{number}/note", {"text": "x"}, headers)[0] == 404
    assert all(h["note"] != "note: x" for h in case_of(cstack, number)["history"])


HOSTILE = '<script>window.pwned = 1</script><b id="bold">粗体</b><img src=x onerror="window.pwned = 2">路灯坏了'


def test_hostile_appeal_text_is_shown_as_text(cstack, browser):
    number = sms_appeal(cstack, "+8617199000603", HOSTILE)
    sign_in(browser, cstack, DESK[-1])
    for page in (f"/console/cases/{number}", "/console/triage", f"/console/cases?q={number}"):
        browser.get(cstack.url + page)
        assert HOSTILE[:40] in browser.find_element(By.TAG_NAME, "main").text
        assert browser.find_elements(By.ID, "bold") == [] and browser.find_elements(By.CSS_SELECTOR, "main img") == []
        assert browser.execute_script("return window.pwned === undefined")
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018 - reading it is what raises
    browser.get(f"{cstack.url}/console/cases/{number}")
    assert browser.find_element(By.ID, "appeal").text == HOSTILE


def test_a_form_without_its_csrf_token_is_refused(cstack, browser):
    number = sms_appeal(cstack, "+8617199000604", f"{PLACE.name}门口垃圾堆了三天没人清理")
    sign_in(browser, cstack, DESK[0])
    browser.get(f"{cstack.url}/console/cases/{number}")
    browser.execute_script("document.querySelector('#note-form input[name=csrf]').remove()")
    browser.find_element(By.CSS_SELECTOR, "#note-form input[name=text]").send_keys("没有令牌的备注")
    browser.find_element(By.CSS_SELECTOR, "#note-form button").click()
    refusal = wait(browser, EC.presence_of_element_located((By.ID, "refusal")))
    assert "CSRF" in refusal.text
    assert "没有令牌的备注" not in str(case_of(cstack, number)["history"])
    browser.get(f"{cstack.url}/console/cases/{number}")  # with its token the same form works
    browser.find_element(By.CSS_SELECTOR, "#note-form input[name=text]").send_keys("有令牌的备注")
    browser.find_element(By.CSS_SELECTOR, "#note-form button").click()
    wait(browser, EC.text_to_be_present_in_element((By.ID, "timeline"), "有令牌的备注"))


def test_every_page_fits_a_phone(cstack, tmp_path):
    number = sms_appeal(cstack, "+8617199000605", "有件事想反映，不知道找谁。" * 12)
    status, created = http_json("POST", f"{cstack.url}/api/broadcasts",
                                {"audience": f"tag:elderly and grid:{COMMUNITY}", "texts": {"zh": "手机宽度测试"}},
                                {"Authorization": "Bearer " + cstack.gridline("operator", "token", OFFICER.id)
                                 .stdout.strip()})
    assert status == 201, created
    pages = ["/console/triage", "/console/cases", f"/console/cases/{number}", "/console/broadcasts",
             f"/console/broadcasts/{created['id']}", "/console/figures", "/console/figures?level=grid"]
    with chromium(tmp_path, phone=True) as phone:
        phone.get(f"{cstack.url}/console/signin")
        widths = {"/console/signin": shot(phone, tmp_path, "signin")}
        sign_in(phone, cstack, OFFICER)
        phone.get(f"{cstack.url}/console/broadcasts")
        phone.find_element(By.ID, "tag-elderly").click()
        phone.find_element(By.ID, "text_zh").send_keys("{name}您好，手机宽度测试。")
        phone.find_element(By.ID, "preview").click()
        wait(phone, EC.presence_of_element_located((By.ID, "recipients")))
        widths["composer preview"] = shot(phone, tmp_path, "composer-preview")
        sign_in(phone, cstack, DESK[1])
        for page in pages:
            phone.get(cstack.url + page)
            wait(phone, EC.presence_of_element_located((By.TAG_NAME, "footer")))
            widths[page] = shot(phone, tmp_path, page.strip("/").replace("/", "-").replace("?", "-"))
    too_wide = {page: w for page, w in widths.items() if w[0] > w[1]}
    assert all(w[1] == PHONE_WIDTH for w in widths.values()), widths
    assert too_wide == {}, f"pages wider than the phone (scrollWidth, clientWidth): {too_wide}"


def shot(driver: WebDriver, folder: Path, name: str) -> tuple[int, int]:
    """Save a full-height screenshot and return the page's (scrollWidth, clientWidth)."""
    width, client, height = driver.execute_script(
        "const e = document.documentElement; return [e.scrollWidth, e.clientWidth, e.scrollHeight];")
    as_phone(driver, min(height, 6000))
    driver.save_screenshot(str(folder / f"{name}.png"))
    as_phone(driver)
    return width, client

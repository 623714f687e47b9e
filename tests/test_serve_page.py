"""The chat page at ``/``, driven in a real headless browser (Debian's Chromium and its driver,
through selenium): it is served whole by the server (no other origin), a message sent from it
gets the model's reply streamed in, in several pieces, under the system line and temperature set
on the page; Clear empties the conversation and the next turn starts afresh; Stop ends a reply
that has not come (the server is paused meanwhile) and gives the message back."""

from __future__ import annotations

import os
import re
import shutil
import signal

import httpx
import pytest

from serve_helpers import Server, train_chat_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="needs Debian's chromium and chromium-driver (scripts/test.sh installs them with apt)")
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (requirements.txt)")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with Server("--out-dir", str(train_chat_model(tmp_path_factory.mktemp("chat")))) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1000,800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)  # no driver download
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait(browser, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(lambda d: condition(d))


def send(browser, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = browser.find_element(By.ID, "input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def replies(browser) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")]


def test_the_page_is_served_by_the_server_itself(server):
    page = httpx.get(server.url + "/", timeout=30)
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text
    for asset in ("/static/chat.js", "/static/chat.css"):
        r = httpx.get(server.url + asset, timeout=30)
        assert r.status_code == 200 and "https://" not in r.text


def test_a_message_from_the_page_streams_the_reply_in(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    wait(browser, lambda d: "parameters" in d.find_element(By.ID, "model").text)  # /v1/models answered
    system = browser.find_element(By.ID, "system")
    system.send_keys("You echo.")
    temperature = browser.find_element(By.ID, "temperature")
    temperature.clear()
    temperature.send_keys("0")
    send(browser, "say king")
    wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle" and replies(d))
    assert replies(browser) == ["king king."]  # the API's answer at temperature 0 (test_serve.py)
    bubble = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")[0]
    assert int(bubble.get_attribute("data-chunks")) == len("king king.")  # a piece per token, as streamed
    assert "tokens in" in browser.find_element(By.ID, "status").text
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".msg.error")] == []

    send(browser, "say rose")  # a second turn: the conversation goes along
    wait(browser, lambda d: len(replies(d)) == 2 and d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle")
    assert replies(browser)[1] == "rose rose."

    browser.find_element(By.ID, "clear").click()
    assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []
    send(browser, "say ghost")
    wait(browser, lambda d: replies(d) and d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle")
    assert replies(browser) == ["ghost ghost."]
    assert browser.find_elements(By.CSS_SELECTOR, ".msg.user")[0].text == "say ghost"


def test_stop_ends_a_reply_and_gives_the_message_back(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(server.url + "/")
    wait(browser, lambda d: "parameters" in d.find_element(By.ID, "model").text)
    state = lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")  # noqa: E731
    done_before = len(re.findall(r"\(chat\): .* stop after", server.log()))
    os.kill(server.proc.pid, signal.SIGSTOP)  # no reply can come: the request waits for the paused server
    try:
        send(browser, "say king")
        wait(browser, lambda d: state(d) == "streaming")
        assert browser.find_element(By.ID, "send").get_attribute("disabled")
        browser.find_element(By.ID, "stop").click()
        wait(browser, lambda d: state(d) == "idle")
        assert browser.find_element(By.ID, "status").text == "stopped"
        assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []  # as if unsent ...
        assert browser.find_element(By.ID, "input").get_attribute("value") == "say king"  # ... and back in the box
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    temperature = browser.find_element(By.ID, "temperature")
    temperature.clear()
    temperature.send_keys("0")
    browser.find_element(By.ID, "input").send_keys(Keys.ENTER)  # sent again, it is answered
    wait(browser, lambda d: replies(d) and state(d) == "idle")
    assert replies(browser) == ["king king."]
    # The server may or may not have seen the stopped request before it went (test_serve_load.py
    # checks that a client that leaves stops its generation); this one it answered.
    assert len(re.findall(r"\(chat\): .* stop after", server.log())) in (done_before + 1, done_before + 2)
    assert "Traceback" not in server.log()

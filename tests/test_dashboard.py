"""The admin dashboard (``GET /`` of the admin listener: fastgw/admin_ui.html) in a real
browser: Debian's headless chromium driven by selenium (``apt-get install chromium
chromium-driver``; selenium is in the test extras). A missing browser is a failure that
names the apt-get line, never a skip.

Each browser test starts a gateway with two workers and ``[admin]``, opens the page,
and waits (bounded, WebDriverWait) for what the page shows; the browser is always quit.
"""

from __future__ import annotations

import shutil
import threading
import time

import httpx
import pytest

from tests.conftest import config_for, free_port, wait_port
from tests.test_server import wait_for

try:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # reported by the fixture, as a failure
    webdriver = None

TOKEN = "dashboard-test-token-0123456789"
APT = "sudo apt-get install chromium chromium-driver"
WAIT = 15.0
#: a route name that would be markup if the page inserted it as HTML
HOSTILE = '<img src=x onerror="window.pwned=1">'

UPSTREAM = '''circuit_breaker = { failures = 1000, cooldown = "5s" }
[upstreams.app.health_check]
path = "/healthz"
interval = "1s"
'''

ROUTES = f"""
[[routes]]
name = "echo"
paths = ["/echo/*"]
upstream = "app"

[[routes]]
name = "errors"
paths = ["/status/*"]
upstream = "app"

[[routes]]
name = '{HOSTILE}'
paths = ["/x/*"]
upstream = "app"
"""


def start_gateway(backend, gateway, monkeypatch, token: bool = True):
    monkeypatch.setenv("FASTGW_TEST_ADMIN_TOKEN", TOKEN)
    admin_port = free_port()
    toml, port = config_for(backend, server="workers = 2", routes=ROUTES, upstream_extra=UPSTREAM)
    toml += f'\n[admin]\nlisten = "127.0.0.1:{admin_port}"\n'
    if token:
        toml += 'token = "env:FASTGW_TEST_ADMIN_TOKEN"\n'
    gw = gateway(toml, port)
    wait_port(admin_port, proc=gw.proc)
    gw.admin = f"http://127.0.0.1:{admin_port}"
    headers = {"Authorization": f"Bearer {TOKEN}"} if token else {}
    wait_for(lambda: all(w.get("running") for w in
                         httpx.get(f"{gw.admin}/status", headers=headers, timeout=5).json()["workers"]),
             timeout=10, what="every worker's status")
    return gw


@pytest.fixture
def browser():
    """Headless chromium (Debian's, with its chromedriver), quit after the test."""
    if webdriver is None:
        pytest.fail("selenium is missing: .venv/bin/pip install -e '.[test]' (or pip install selenium)")
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.fail(f"the dashboard test needs headless chromium and its driver: {APT}")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1100,820", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def until(driver, predicate, what: str, timeout: float = WAIT):
    """``predicate(driver)`` until truthy (returned), at most ``timeout``; a timeout says what
    was awaited and what the page's status line said."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(predicate)
    except WebDriverException as exc:
        state = driver.execute_script("var s = document.getElementById('state'); return s && s.textContent;")
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (page status: {state!r})") from exc


def route_rows(driver) -> dict[str, dict[str, str]]:
    """Each route row of the page, in the page's order: its name → {cell class: text}."""
    return dict(driver.execute_script("""
        return Array.from(document.querySelectorAll('#routes tbody tr[data-route]')).map(function (tr) {
            var cells = {};
            tr.querySelectorAll('td').forEach(function (td) {
                cells[td.className.split(' ')[0]] = td.textContent; });
            return [tr.getAttribute('data-route'), cells];
        });"""))


def target_rows(driver) -> list[dict[str, str]]:
    return driver.execute_script("""
        return Array.from(document.querySelectorAll('#targets tbody tr[data-target]')).map(function (tr) {
            return {upstream: tr.getAttribute('data-upstream'), target: tr.getAttribute('data-target'),
                    health: tr.querySelector('td.health').textContent,
                    circuit: tr.querySelector('td.circuit').textContent}; });""")


def number(text: str) -> float:
    return float(text.replace(",", "")) if text not in ("", "–") else float("nan")


class Traffic:
    """Requests to the gateway from a thread until stopped (at most ``limit`` seconds)."""

    def __init__(self, url: str, limit: float = 20.0) -> None:
        self.url, self.limit = url, limit
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self.stop.is_set() and time.monotonic() < deadline:
                for path in ("/echo/a", "/echo/b", "/echo/c", "/status/503", "/status/404", "/x/1"):
                    client.get(path)
                    self.sent += 1
                time.sleep(0.005)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def test_the_page_is_served_without_the_token_and_holds_no_data(backend, gateway, monkeypatch):
    gw = start_gateway(backend, gateway, monkeypatch)
    r = httpx.get(f"{gw.admin}/", timeout=5)
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store"
    page = r.text
    assert page.startswith("<!doctype html>") and "fetch(" in page
    # Self-contained: nothing loaded from elsewhere, and nothing of this gateway in it.
    assert "http://" not in page and "https://" not in page and "<script src" not in page
    assert "echo" not in page and TOKEN not in page and "127.0.0.1" not in page
    head = httpx.head(f"{gw.admin}/", timeout=5)
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) == len(r.content)
    # Everything else still needs the token, and / takes no other method.
    assert httpx.get(f"{gw.admin}/status", timeout=5).status_code == 401
    assert httpx.get(f"{gw.admin}/metrics", timeout=5).status_code == 401
    post = httpx.post(f"{gw.admin}/", timeout=5)
    assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"


def test_dashboard_in_headless_chromium_shows_routes_and_targets_live(backend, gateway, monkeypatch, browser,
                                                                      tmp_path):
    gw = start_gateway(backend, gateway, monkeypatch)
    browser.get(f"{gw.admin}/")
    # A token is configured: the page asks for it; a wrong one is refused, the right one taken.
    until(browser, lambda d: d.find_element(By.ID, "login").is_displayed(), "the token form")
    browser.find_element(By.ID, "token").send_keys("wrong")
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    until(browser, lambda d: "refused" in d.find_element(By.ID, "login-error").text, "the refusal")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#login button").click()

    # The config's routes, in file order, names as text (the hostile one is not markup).
    until(browser, lambda d: list(route_rows(d))[:3] == ["echo", "errors", HOSTILE], "the config's routes")
    assert route_rows(browser)[HOSTILE]["name"] == HOSTILE
    assert browser.find_elements(By.CSS_SELECTOR, "#routes img") == []
    assert browser.execute_script("return window.pwned === undefined")
    assert not browser.find_element(By.ID, "login").is_displayed()
    assert browser.find_element(By.ID, "version").text == "0.1.0"
    assert browser.find_element(By.ID, "workers").text == "2/2 running"

    # The target: health checks pass, the circuit is closed.
    target = f"{backend.address}"
    until(browser, lambda d: target_rows(d) == [{"upstream": "app", "target": target,
                                                 "health": "healthy", "circuit": "closed"}],
          "the target healthy and closed")

    with Traffic(gw.url) as traffic:
        def moving(d):
            rows = route_rows(d)
            echo, errors = rows["echo"], rows["errors"]
            return (number(echo["rps"]) > 0 and number(errors["rps"]) > 0 and echo["p50"] != "–"
                    and echo["p99"] != "–" and errors["e5"] not in ("–", "0%") and rows)
        rows = until(browser, moving, "requests/s, latencies and error shares to move")
        screenshot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(screenshot))
    assert traffic.sent > 0
    print(f"dashboard screenshot: {screenshot} ({screenshot.stat().st_size} bytes)")

    echo, errors = rows["echo"], rows["errors"]
    assert echo["e5"] == "0%" and echo["e4"] == "0%"
    # errors: one 503 and one 404 a round, in equal numbers (within the window's edges).
    assert 35 <= number(errors["e5"].rstrip("%")) <= 65 and 35 <= number(errors["e4"].rstrip("%")) <= 65
    assert echo["p50"].endswith(" ms") or echo["p50"].endswith(" s")
    assert number(echo["total"]) > 0
    assert target_rows(browser)[0]["health"] == "healthy"
    assert 0 < screenshot.stat().st_size < 500_000

    # The token stays for the tab: a reload of the page does not ask again.
    browser.refresh()
    until(browser, lambda d: "echo" in route_rows(d), "the routes after a reload")
    assert not browser.find_element(By.ID, "login").is_displayed()


def test_without_a_token_the_page_just_works_and_its_arithmetic(backend, gateway, monkeypatch, browser):
    gw = start_gateway(backend, gateway, monkeypatch, token=False)
    browser.get(f"{gw.admin}/")
    until(browser, lambda d: "echo" in route_rows(d), "the routes, with no token asked")
    assert not browser.find_element(By.ID, "login").is_displayed()

    js = "return window.fastgwDashboard."
    # Prometheus' histogram_quantile on cumulative buckets (le, count).
    buckets = [[0.001, 0], [0.0025, 10], [0.005, 10], ["Infinity", 10]]
    q = browser.execute_script(js + "quantile(arguments[0], arguments[1].map(function (b) {"
                               "return [Number(b[0]), b[1]]; }))", 0.5, buckets)
    assert q == pytest.approx(0.00175)
    q = browser.execute_script(js + "quantile(0.99, [[0.1, 50], [0.25, 100], [Infinity, 100]])")
    assert q == pytest.approx(0.1 + 0.15 * (99 - 50) / 50)
    # Beyond the last finite bucket: its bound, as Prometheus says.
    assert browser.execute_script(js + "quantile(0.99, [[0.1, 1], [10, 1], [Infinity, 100]])") == 10
    assert browser.execute_script("return isNaN(window.fastgwDashboard.quantile(0.5, [[0.1, 0], [Infinity, 0]]))")
    # The text format: escaped label values, +Inf, comments.
    samples = browser.execute_script(js + "parseMetrics(arguments[0])",
                                     '# HELP x y\n# TYPE x counter\n'
                                     'x_total{route="a\\"b\\\\c\\nd",code="200"} 7\n'
                                     'h_bucket{le="+Inf"} 3\nplain 1.5\n')
    assert samples[0] == {"name": "x_total", "labels": {"route": 'a"b\\c\nd', "code": "200"}, "value": 7}
    assert samples[1]["labels"] == {"le": "+Inf"} and samples[2] == {"name": "plain", "labels": {}, "value": 1.5}

"""The live status page of `raftcore kv --http` (issue 13) in headless
Chromium (Debian's chromium and chromium-driver, driven by selenium)
against a 3-node cluster of real processes: the page, rendered by its own
script from the node's /cluster, shows three nodes and one leader, and its
chart draws the writes made meanwhile. A screenshot is kept in the test's
tmp dir (status_page.png).

The browser is polled for the rendered state with a deadline (selenium's
WebDriverWait), never waited on for a fixed time.
"""
from __future__ import annotations

import asyncio
import shutil
from importlib import resources

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from http_harness import HttpKvCluster, wait_http
from kv_harness import GUARD, kv_test, serving

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def open_browser(tmp_path) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1000,800", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    service = Service(executable_path=shutil.which("chromedriver") or CHROMEDRIVER,
                      log_output=str(tmp_path / "chromedriver.log"))
    return webdriver.Chrome(options=options, service=service)


def rows(driver) -> list[dict]:
    """The node rows the page rendered: id, role and the text of each cell
    (read in one script call: the page re-renders its table at every poll)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#nodes tbody tr.node')].map(tr => ("
        "{id: tr.dataset.id, role: tr.dataset.role,"
        " cells: [...tr.cells].map(td => td.textContent)}))")


def chart_paths(driver) -> dict:
    """id -> the `d` of each path of the chart."""
    return driver.execute_script(
        "const out = {}; for (const p of document.querySelectorAll('#chart path'))"
        " out[p.id] = p.getAttribute('d') || ''; return out")


@kv_test
async def test_status_page_in_chromium_shows_three_nodes_one_leader_and_a_chart(tmp_path):
    with HttpKvCluster(tmp_path) as c:
        async with serving(c) as (client, leader):
            await wait_http(c)
            loop = asyncio.get_running_loop()
            driver = await loop.run_in_executor(None, open_browser, tmp_path)
            try:
                # The leader's page: its chart also shows commit latency.
                await loop.run_in_executor(None, driver.get, c.url(leader, "/"))

                def three_nodes_one_leader(d):
                    got = rows(d)
                    roles = sorted(r["role"] for r in got)
                    return got if roles == ["FOLLOWER", "FOLLOWER", "LEADER"] else False
                got = await loop.run_in_executor(
                    None, WebDriverWait(driver, GUARD, poll_frequency=0.1).until,
                    three_nodes_one_leader)
                assert sorted(r["id"] for r in got) == ["1", "2", "3"]
                lead = next(r for r in got if r["role"] == "LEADER")
                assert lead["id"] == str(leader)
                assert "127.0.0.1:" in lead["cells"][1]

                # Writes while the page polls: the chart draws a rate line
                # (it needs two polls) and a latency line.
                writing = True

                async def write():
                    n = 0
                    while writing:
                        await client.set(f"k{n}", n)
                        n += 1
                writer = asyncio.ensure_future(write())

                def chart_drawn(d):
                    paths = chart_paths(d)
                    return paths if all(paths.get(k, "").count("L") >= 1
                                        for k in ("rate-line", "latency-line")) else False
                try:
                    await loop.run_in_executor(
                        None, WebDriverWait(driver, GUARD, poll_frequency=0.2).until,
                        chart_drawn)
                finally:
                    writing = False
                    await writer
                meta = driver.find_element(By.ID, "meta").text
                assert f"served by node {leader}" in meta and f"leader: {leader}" in meta
                assert driver.find_element(By.ID, "error").text == ""
                shot = tmp_path / "status_page.png"
                assert driver.save_screenshot(str(shot))
                assert shot.stat().st_size > 1000
            finally:
                await loop.run_in_executor(None, driver.quit)


def test_status_page_ships_with_the_installed_package_and_loads_nothing_from_elsewhere():
    page = resources.files("raftcore.kv").joinpath("status_page.html").read_text()
    assert "<svg" in page and "<script>" in page
    # No external assets: the page must work on a machine without internet.
    for marker in ("http://", "https://", "//cdn", "src=", "@import"):
        assert marker not in page.replace("http://www.w3.org/2000/svg", ""), marker

"""The console in a real headless Chromium, driven over WebDriver (selenium + Debian's
chromedriver). Run by tests/tests/it/console.rs, which starts a repository, makes real backups
and passes what it made as JSON on stdin:

  url, admin, backup_a, backup_b, source, total, full, incremental, latest, file {disk,
  partition, path, original}, search {name, total}, foreign_source, screenshots, downloads

Each check raises AssertionError with what it saw; the process exits non-zero on the first
failure. Screenshots of the main pages go to `screenshots` (docs/console in the repository).
"""

import hashlib
import json
import os
import sys
import time
import urllib.parse

from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException, StaleElementReferenceException, TimeoutException, WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

CFG = json.load(sys.stdin)
LAPTOP = (1280, 900)
PHONE = (390, 844)
# Generous: a condition waited for, not a timing assertion (a slow CI machine only waits longer).
WAIT = 120


def browser():
    o = webdriver.ChromeOptions()
    o.binary_location = "/usr/bin/chromium"
    for flag in [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--user-data-dir=" + CFG["profile"],
        "--window-size=%d,%d" % LAPTOP,
    ]:
        o.add_argument(flag)
    o.add_experimental_option("prefs", {
        "download.default_directory": CFG["downloads"],
        "download.prompt_for_download": False,
        "safebrowsing.enabled": False,
    })
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)
    try:
        d.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": CFG["downloads"]})
    except WebDriverException:
        pass  # the download.default_directory preference applies
    return d


D = browser()


def wait(cond, what):
    try:
        return WebDriverWait(
            D, WAIT, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
        ).until(cond)
    except TimeoutException:
        err = D.find_elements(By.ID, "error")
        shown = err[0].text if err and err[0].is_displayed() else ""
        raise AssertionError(f"waited for {what}; page {D.current_url!r}, error box {shown!r}")


def css(sel, what=None):
    return wait(EC.visibility_of_element_located((By.CSS_SELECTOR, sel)), what or sel)


def idle():
    wait(lambda d: d.find_element(By.ID, "main").get_attribute("aria-busy") == "false", "the page to load")


def go(hash_):
    D.get(CFG["url"] + "/" + hash_)
    idle()


def shot(name, size=LAPTOP):
    D.set_window_size(*size)
    time.sleep(0.3)  # layout settles after a resize; the picture is not asserted on
    D.save_screenshot(os.path.join(CFG["screenshots"], name + ".png"))
    D.set_window_size(*LAPTOP)


def sign_in(token):
    # Forget the tab's token on a page of the same origin that is not the console, then open it.
    D.get(CFG["url"] + "/healthz")
    D.execute_script("sessionStorage.clear()")
    D.get(CFG["url"] + "/#/")
    box = css("#token", "the sign-in form")
    box.clear()
    box.send_keys(token)
    D.find_element(By.ID, "signin").click()


def step(name):
    print("console.py:", name, flush=True)


# 1. A wrong token shows the API's error, and nothing is signed in.
step("wrong token")
sign_in("not-a-token-at-all-0000")
err = css("#error", "the error box")
assert err.get_attribute("data-code") == "UNAUTHORIZED", err.text
assert "UNAUTHORIZED" in err.text, err.text
assert D.execute_script("return sessionStorage.getItem('backup-console-token')") is None
assert D.find_element(By.ID, "token").is_displayed()
shot("signin-error")

# 2. Admin: overview with the repository's stats and the sources of every tenant.
step("admin overview")
sign_in(CFG["admin"])
css("#repo-stats")
idle()
assert D.find_element(By.ID, "who").text.endswith("admin"), D.find_element(By.ID, "who").text
rows = {r.get_attribute("data-source"): r for r in D.find_elements(By.CSS_SELECTOR, "tr.source-row")}
assert CFG["source"] in rows and CFG["foreign_source"] in rows, list(rows)
cells = rows[CFG["source"]].find_elements(By.TAG_NAME, "td")
assert cells[2].text == str(CFG["total"]), cells[2].text
backups_card = D.find_element(By.CSS_SELECTOR, "#stat-backups .card-value").text
assert backups_card == str(CFG["all_backups"]), backups_card
assert len(D.find_elements(By.CSS_SELECTOR, "#chart-stored circle")) == CFG["all_backups"]
assert len(D.find_elements(By.CSS_SELECTOR, "#chart-dedup circle")) == CFG["all_backups"]
shot("overview")
shot("overview-phone", PHONE)
# Phone width: the page itself never scrolls sideways (wide tables scroll in their own box).
D.set_window_size(*PHONE)
wide = D.execute_script("return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
D.set_window_size(*LAPTOP)
assert wide[0] <= wide[1], wide

# 3. The source's chain: counts, kinds and base links as made by the real backups.
step("chain")
rows[CFG["source"]].find_element(By.TAG_NAME, "a").click()
summary = css("#chain-summary")
idle()
got = {k: summary.get_attribute("data-" + k) for k in ("total", "full", "incremental")}
want = {k: str(CFG[k]) for k in ("total", "full", "incremental")}
assert got == want, (got, want)
chain = D.find_elements(By.CSS_SELECTOR, "tr.backup-row")
assert [r.get_attribute("data-id") for r in chain] == CFG["chain"], [r.get_attribute("data-id") for r in chain]
kinds = [r.get_attribute("data-kind") for r in chain]
assert kinds == CFG["kinds"], kinds
for row, want_new, want_reused in zip(chain, CFG["new_chunks"], CFG["reused_chunks"]):
    assert row.find_element(By.CSS_SELECTOR, ".new-chunks").text == str(want_new)
    assert row.find_element(By.CSS_SELECTOR, ".reused-chunks").text == str(want_reused)
shot("chain")

# 4. A backup's page, then its file system down to one file, downloaded and compared.
step("backup page and download")
chain[0].find_element(By.CSS_SELECTOR, "td a").click()
css("#backup-page")
idle()
assert D.find_element(By.ID, "backup-id").text == CFG["latest"]
assert D.find_element(By.ID, "backup-kind").text == "incremental"
reasons = [r.get_attribute("data-reason") for r in D.find_elements(By.CSS_SELECTOR, "#skipped tr[data-reason]")]
for r in ["hole", "zero", "swap", "free", "excluded", "unchanged"]:
    assert r in reasons, reasons
assert D.find_element(By.ID, "deletable").text == "no"
assert "Immutable until" in D.find_element(By.ID, "immutable-reason").text
shot("backup", (1280, 1700))
f = CFG["file"]
D.find_element(By.CSS_SELECTOR, "a.fs-link").click()
css("#listing")
idle()
parts = [p for p in f["path"].split("/") if p]
for i, name in enumerate(parts):
    link = wait(EC.element_to_be_clickable((By.CSS_SELECTOR, f'a.entry[data-name="{name}"]')), "entry " + name)
    link.click()
    idle()
    if i < len(parts) - 1:
        wait(lambda d: d.find_element(By.ID, "dir-path").text == "/" + "/".join(parts[: i + 1]), "directory " + name)
    if i == len(parts) - 2:
        shot("files")
assert css("#file-name").text == parts[-1]
size = int(D.find_element(By.ID, "file-size").get_attribute("data-bytes"))
original = open(f["original"], "rb").read()
assert size == len(original), (size, len(original))
for old in os.listdir(CFG["downloads"]):
    os.remove(os.path.join(CFG["downloads"], old))
D.find_element(By.ID, "download").click()
wait(lambda d: d.find_element(By.ID, "download-status").get_attribute("data-done") == str(size), "the download")
target = os.path.join(CFG["downloads"], parts[-1])
wait(lambda d: os.path.exists(target) and os.path.getsize(target) == size, "the downloaded file " + target)
got = open(target, "rb").read()
assert hashlib.sha256(got).hexdigest() == hashlib.sha256(original).hexdigest(), "downloaded bytes differ"
shot("file")

# 5. Search a name across the three backups and page through the results.
step("search")
s = CFG["search"]
go("#/search")
css("#q-name").send_keys(s["name"])
D.find_element(By.ID, "q-tenant").send_keys(s["tenant"])  # an admin searches a tenant by name
limit = D.find_element(By.ID, "q-limit")
limit.clear()
limit.send_keys("2")
D.find_element(By.ID, "search-go").click()
seen = []
page = 0
while True:
    summary = css("#search-summary")
    idle()
    assert summary.get_attribute("data-total") == str(s["total"]), summary.text
    hits = D.find_elements(By.CSS_SELECTOR, "tr.hit")
    assert 1 <= len(hits) <= 2, len(hits)
    seen += [(h.get_attribute("data-backup"), h.get_attribute("data-path")) for h in hits]
    if page == 0:
        shot("search")
    page += 1
    nxt = D.find_elements(By.ID, "next-page")
    if not nxt:
        break
    before = summary.get_attribute("data-first")
    nxt[0].click()
    wait(lambda d: d.find_element(By.ID, "search-summary").get_attribute("data-first") != before, "the next page")
assert page == (s["total"] + 1) // 2, page
assert len(seen) == s["total"] and len(set(seen)) == s["total"], seen
assert sorted({b for b, _ in seen}) == sorted(CFG["chain"]), seen
prev = D.find_elements(By.ID, "prev-page")
assert prev, "a previous-page link on the last page"
prev[0].click()
wait(lambda d: d.find_element(By.ID, "search-summary").get_attribute("data-first") == str(2 * (page - 2) + 1), "the previous page")

# 6. Jobs: the prune dry run, then a verify started and watched to the end.
step("jobs")
go("#/jobs")
D.find_element(By.ID, "prune-dry").click()
css("#prune-report")
css("#prune-apply")
D.find_element(By.ID, "start-verify").click()
row = css("tr.job[data-kind=verify]", "the verify job")
wait(lambda d: d.find_element(By.CSS_SELECTOR, "tr.job[data-kind=verify]").get_attribute("data-state") != "running", "the verify to finish")
row = D.find_element(By.CSS_SELECTOR, "tr.job[data-kind=verify]")
assert row.get_attribute("data-state") == "done", row.text
result = json.loads(row.find_element(By.CSS_SELECTOR, "pre.result").text)
assert result["chunks_checked"] > 0 and not result["corrupt"] and not result["missing"], result
shot("jobs")

# 7. A backup-role token of another tenant sees its own sources only.
step("tenancy")
sign_in(CFG["backup_b"])
wait(lambda d: d.find_element(By.ID, "who").text.endswith("backup"), "signed in as globex")
idle()
rows = [r.get_attribute("data-source") for r in D.find_elements(By.CSS_SELECTOR, "tr.source-row")]
assert rows == [CFG["foreign_source"]], rows
assert not D.find_elements(By.ID, "repo-stats")
assert not D.find_element(By.CSS_SELECTOR, 'nav a[data-view="jobs"]').is_displayed()
# Even a direct link to acme's backup answers the API's not-found.
go("#/backup/" + urllib.parse.quote(CFG["latest"]))
err = css("#error")
assert err.get_attribute("data-code") == "NOT_FOUND", err.text

# 8. The CSP held: no violation or script error was logged.
logs = [l for l in D.get_log("browser")
        if any(w in l["message"] for w in ("Content Security Policy", "Refused to", "Uncaught", "TypeError"))]
assert not logs, logs
D.quit()
print("console.py: all checks passed", flush=True)

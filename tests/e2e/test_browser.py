"""End to end in a real browser: headless Chromium (Debian's package, driven by Playwright)
against real processes — the supervisor (gunicorn), a start-queue worker (``manage.py rqworker
app_starts``), env_a and env_b (gunicorn + agent each), Redis and PostgreSQL (tests/support/cluster.py).

One operator story, step by step, a screenshot of each under test-artifacts/e2e/.
"""

from __future__ import annotations

import re

import pytest

from tests.support.processes import ROOT, wait_until

pytestmark = pytest.mark.cluster

ARTIFACTS = ROOT / "test-artifacts" / "e2e"
APP = "shop_e2e"
APP_ADMIN, APP_ADMIN_PASSWORD = "boss", "app-boss-pass-1"
RECORD = "Ada Lovelace (e2e)"


class Steps:
    """Screenshots named by step, and the page's console errors."""

    def __init__(self, page):
        self.page = page
        self.count = 0
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def shot(self, name: str) -> None:
        self.count += 1
        self.page.screenshot(path=str(ARTIFACTS / f"{self.count:02d}-{name}.png"), full_page=True)


def _badge(page, row_text: str, label: str | None = None):
    row = page.locator("#result_list tbody tr", has_text=row_text)
    badges = row.locator(".appsup-badge")
    return badges.filter(has_text=f"{label}:") if label else badges


def test_operator_story_in_a_real_browser(browser, cluster_logs, operator, queue_worker):
    cluster = cluster_logs
    base = cluster.url
    context = browser.new_context(base_url=base, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    steps = Steps(page)
    from playwright.sync_api import expect

    # 1. Log into the supervisor's admin; both environments are online.
    page.goto("/admin/")
    page.fill("#id_username", operator[0])
    page.fill("#id_password", operator[1])
    page.click("input[type=submit]")
    expect(page.locator("#user-tools")).to_contain_text(operator[0])
    page.get_by_role("link", name="Environments").click()
    # The rows appear once the supervisor has applied the workers' registrations (a list only
    # refreshes the badges of the rows it has): reload until both are there.
    wait_until(
        lambda: page.reload() and _badge(page, "env_a").count() and _badge(page, "env_b").count(),
        timeout=30,
        interval=0.5,
        message="env_a and env_b listed",
    )
    for env in ("env_a", "env_b"):
        expect(_badge(page, env)).to_have_text("online", timeout=15_000)
    steps.shot("environments-online")

    # 2. Create an app on both environments with a business module, start it, and watch
    #    both badges turn running with no reload (the page's own marker survives).
    page.goto("/admin/apps_registry/application/add/")
    page.fill("#id_name", APP)
    page.fill("#id_display_name", "Shop (e2e)")
    for env in ("env_a", "env_b"):
        page.get_by_label(env, exact=True).check()
    page.get_by_label("contacts", exact=False).first.check()
    page.fill("#id_admin_username", APP_ADMIN)
    page.fill("#id_admin_password", APP_ADMIN_PASSWORD)
    steps.shot("create-app-form")
    page.click("input[name=_save]")
    expect(page.locator("#result_list")).to_contain_text(APP)
    expect(_badge(page, APP, "env_a")).to_have_text("env_a: stopped")
    page.locator("#result_list tbody tr", has_text=APP).get_by_role("link", name="start", exact=True).click()
    steps.shot("confirm-start")
    page.click("input[type=submit][value^='Yes']")
    expect(page.locator("ul.messagelist")).to_contain_text("Start queued")
    page.evaluate("window.__e2eNoReload = true")
    for env in ("env_a", "env_b"):
        expect(_badge(page, APP, env)).to_have_text(f"{env}: running", timeout=60_000)
    assert page.evaluate("window.__e2eNoReload === true"), "the list was reloaded; badges must update in place"
    steps.shot("both-running")

    # 3. Open the app through the supervisor, choose env_a, log in as the app's admin, add a record.
    page.goto(f"/apps/{APP}/admin/")
    expect(page.locator("body")).to_contain_text("env_b")
    steps.shot("chooser")
    page.get_by_role("link", name="Use env_a").click()
    page.fill("#id_username", APP_ADMIN)
    page.fill("#id_password", APP_ADMIN_PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#user-tools")).to_contain_text(APP_ADMIN)
    page.goto(f"/apps/{APP}/admin/contacts/contact/add/")
    page.fill("#id_name", RECORD)
    page.fill("#id_email", "ada@example.com")
    page.click("input[name=_save]")
    expect(page.locator("ul.messagelist")).to_contain_text("was added successfully")
    expect(page.locator("#result_list")).to_contain_text(RECORD)
    steps.shot("record-created-on-env-a")
    assert re.search(rf"POST /apps/{APP}/admin/contacts/contact/add/", cluster.env_a.web.log())
    assert f"/apps/{APP}/admin/contacts/contact/add/" not in cluster.env_b.web.log()

    # 4. Switch to env_b: the same record is there (one database for the app); log out.
    page.goto(f"/apps/{APP}/admin/contacts/contact/?env=env_b")
    expect(page.locator("#result_list")).to_contain_text(RECORD)
    assert f"GET /apps/{APP}/admin/contacts/contact/ " in cluster.env_b.web.log()
    steps.shot("record-seen-on-env-b")
    page.locator("#logout-form button, #logout-form input[type=submit]").first.click()
    expect(page.locator("body")).to_contain_text("Logged out")
    page.goto(f"/apps/{APP}/admin/contacts/contact/")
    expect(page.locator("#id_username")).to_be_visible()  # logged out for real
    steps.shot("logged-out")
    cookies = {c["name"]: c for c in context.cookies()}
    assert cookies["sessionid"]["path"] == "/admin/" and cookies["sessionid"]["httpOnly"]

    # 5. Stop the app from the supervisor: its URL answers 503; the audit trail lists each action.
    page.goto("/admin/apps_registry/application/")
    page.locator("#result_list tbody tr", has_text=APP).get_by_role("link", name="stop", exact=True).click()
    page.click("input[type=submit][value^='Yes']")
    for env in ("env_a", "env_b"):
        expect(_badge(page, APP, env)).to_have_text(f"{env}: stopped", timeout=30_000)
    response = page.goto(f"/apps/{APP}/admin/")
    assert response.status == 503
    assert response.headers.get("retry-after")
    expect(page.locator("body")).to_contain_text("stopped")
    steps.shot("stopped-503")
    page.goto(f"/admin/apps_registry/auditentry/?app_name={APP}")
    trail = page.locator("#result_list")
    for action in ("Create", "Start", "Stop"):  # the audit list shows actions as labels
        shown = page.locator("td.field-action_shown", has_text=re.compile(rf"^{action}$"))
        row = trail.locator("tbody tr").filter(has=shown)
        expect(row).to_have_count(1)
        expect(row.locator("td.field-result")).to_have_text(re.compile("ok", re.IGNORECASE))
    expect(trail).to_contain_text(operator[0])
    steps.shot("audit-trail")
    assert steps.errors == [], steps.errors
    context.close()

"""The cockpit's walk-through in Debian's Chromium, at 1280×800 and at 1920×1080, on the session
cluster (supervisor, env_a, env_b, a start-queue worker): dashboard → create an app with a
40-character name and display name on both environments → watch it reach running without a
reload → stop and start it on env_a from its page → Visit through the chooser and back → its
log lines show the start → delete it with its data after a confirmation.

At each screen the statuses and operations lie inside the viewport (element bounding boxes),
the page has no horizontal scroll, and a row's buttons neither overlap nor wrap; nothing
destructive happens before its confirmation. Screenshots: test-artifacts/cockpit/<size>-NN-<step>.png.
"""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

from tests.support.processes import ROOT, wait_until

pytestmark = pytest.mark.cluster

ARTIFACTS = ROOT / "test-artifacts" / "cockpit"
SIZES = [(1280, 800), (1920, 1080)]


def _inside(page, locator, what: str) -> None:
    """The element is wholly inside the viewport (scrolled to vertically, never horizontally)."""
    locator.scroll_into_view_if_needed()
    box = locator.bounding_box()
    viewport = page.viewport_size
    assert box is not None, f"{what}: not rendered"
    assert box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"] + 0.5, (what, box, viewport)
    assert box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"] + 0.5, (what, box, viewport)


SIDEWAYS = """() => {
  const found = [];
  if (document.documentElement.scrollWidth > window.innerWidth) found.push("the page");
  document.querySelectorAll("body *").forEach((e) => {
    const x = getComputedStyle(e).overflowX;
    if ((x === "auto" || x === "scroll") && e.scrollWidth > e.clientWidth + 1)
      found.push((e.id || e.className || e.tagName) + " " + e.scrollWidth + ">" + e.clientWidth);
  });
  return found;
}"""

# On failure: which column is wide, and by what text (the session cluster's other rows differ from run to run).
COLUMN_WIDTHS = """() => {
  const widest = {};
  document.querySelectorAll("#result_list tr > *").forEach((c) => {
    const name = [...c.classList].find((k) => k.startsWith("field-") || k.startsWith("action-")) || c.tagName;
    const w = Math.round(c.getBoundingClientRect().width);
    if (!widest[name] || widest[name][0] < w) widest[name] = [w, c.innerText.slice(0, 60)];
  });
  return widest;
}"""


def _no_horizontal_scroll(page, what: str) -> None:
    """Neither the page nor any box in it (the admin's list scrolls inside .results) scrolls sideways."""
    sideways = page.evaluate(SIDEWAYS)
    widths = page.evaluate(COLUMN_WIDTHS) if sideways else {}
    assert not sideways, f"{what}: scrolls sideways: {sideways}; widest cell per column: {widths}"


def _buttons_in_one_row(page, buttons, what: str) -> None:
    """Each visible button inside the viewport, all on one line, none overlapping the next."""
    boxes = []
    for i in range(buttons.count()):
        button = buttons.nth(i)
        if button.is_visible():
            _inside(page, button, f"{what} button {i}")
            boxes.append(button.bounding_box())
    assert boxes, f"{what}: no button shown"
    tops = {round(b["y"]) for b in boxes}
    assert max(tops) - min(tops) <= 2, f"{what}: the buttons wrap into rows {sorted(tops)}"
    ordered = sorted(boxes, key=lambda b: b["x"])
    for left, right in zip(ordered, ordered[1:], strict=False):
        assert left["x"] + left["width"] <= right["x"] + 0.5, f"{what}: buttons overlap {left} {right}"


def _api_status(base: str, session: str, app_pk: str) -> dict:
    """The app's observed statuses from the admin's status endpoint, outside the page (the
    browser's own session cookie): what the registry holds, whatever the page shows."""
    request = urllib.request.Request(f"{base}/admin/app-supervisor/status.json?apps={app_pk}")
    request.add_header("Cookie", f"sessionid={session}")
    with urllib.request.urlopen(request, timeout=10) as response:
        statuses = json.load(response)["apps"].get(app_pk, {}).get("statuses", {})
    return {env: s["observed"] for env, s in statuses.items()}


class Shots:
    def __init__(self, page, size: str):
        self.page, self.size, self.count, self.errors = page, size, 0, []
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str) -> None:
        self.count += 1
        self.page.screenshot(path=str(ARTIFACTS / f"{self.size}-{self.count:02d}-{name}.png"))


@pytest.mark.parametrize("width,height", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_cockpit_walk_through(browser, cluster_logs, operator, queue_worker, width, height):
    from playwright.sync_api import expect

    base = cluster_logs.url
    name = f"cockpit_{width}_".ljust(40, "x")  # 40 characters: the longest name allowed
    display = f"Cockpit walk-through at {width} px wide".ljust(40, ".")
    context = browser.new_context(base_url=base, viewport={"width": width, "height": height})
    context.set_default_timeout(20_000)
    page = context.new_page()
    shot = Shots(page, f"{width}x{height}")

    # Dashboard: the fleet's figures, the two environments online.
    page.goto("/admin/")
    page.fill("#id_username", operator[0])
    page.fill("#id_password", operator[1])
    page.click("input[type=submit]")
    wait_until(
        lambda: page.reload() and "online: 2" in page.locator("#appsup-dash-environments").inner_text(),
        timeout=20,
        interval=0.5,
        message="the dashboard counts env_a and env_b online",
    )
    for block in ("#appsup-dash-environments", "#appsup-dash-apps", "#appsup-dash-queue", "#appsup-dash-errors"):
        expect(page.locator(block)).to_be_visible()
    _no_horizontal_scroll(page, "dashboard")
    shot("dashboard")
    session = next(c["value"] for c in context.cookies() if c["name"] == "sessionid")

    # Create it on both environments, started at once; the list shows it reach running.
    page.goto("/admin/apps_registry/application/add/")
    page.fill("#id_name", name)
    page.fill("#id_display_name", display)
    for env in ("env_a", "env_b"):
        page.get_by_label(env, exact=True).check()
    page.get_by_label("Start now").check()
    shot("create")
    page.click("input[name=_save]")
    row = page.locator("#result_list tbody tr", has=page.locator(f"span[title='{name}']"))
    expect(row).to_have_count(1)
    page.evaluate("window.__noReload = true")
    for env in ("env_a", "env_b"):
        expect(row.locator(".appsup-badge", has_text=f"{env}:")).to_have_text(f"{env}: running", timeout=45_000)
    assert page.evaluate("window.__noReload === true"), "the list reloaded: badges must change in place"
    _no_horizontal_scroll(page, "applications list")
    for badge in range(2):
        _inside(page, row.locator(".appsup-badge").nth(badge), f"list badge {badge}")
    _inside(page, row.locator("a.appsup-visit"), "list Visit")
    _buttons_in_one_row(page, row.locator("a.appsup-op"), "list row")
    _inside(page, row.locator(f"span[title='{name}']"), "list name (cut, whole in its title)")
    expect(row.get_by_role("link", name="start", exact=True)).to_be_hidden()  # running: no start
    shot("list-running")

    # Its page: status and operations per environment; stop env_a, then start it again.
    row.locator(f"span[title='{name}']").click()
    cockpit = page.locator(".appsup-cockpit")
    app_pk = cockpit.get_attribute("data-app-pk")
    env_a = cockpit.locator("tr[data-environment='env_a']")
    expect(env_a.locator(".appsup-badge")).to_have_text("env_a: running")
    expect(cockpit.locator(".appsup-first-admin")).to_have_text("admin")
    for env in ("env_a", "env_b"):
        line = cockpit.locator(f"tr[data-environment='{env}']")
        _inside(page, line.locator(".appsup-badge"), f"{env} status")
        _buttons_in_one_row(page, line.locator("a.appsup-op"), f"{env} operations")
    _buttons_in_one_row(page, cockpit.locator(".appsup-for-all a.appsup-op"), "operations for all")
    _no_horizontal_scroll(page, "app page")
    expect(env_a.get_by_role("link", name="Start", exact=True)).to_be_hidden()
    shot("app-page-running")
    env_a.get_by_role("link", name="Stop", exact=True).click()
    expect(page.locator("#content h1")).to_contain_text("on env_a?")
    assert _api_status(base, session, app_pk) == {"env_a": "running", "env_b": "running"}, "stopped unconfirmed"
    shot("confirm-stop-env-a")
    page.click("input[type=submit][value='Yes, stop']")
    expect(env_a.locator(".appsup-badge")).to_have_text("env_a: stopped", timeout=20_000)
    expect(cockpit.locator("tr[data-environment='env_b'] .appsup-badge")).to_have_text("env_b: running")
    start = env_a.get_by_role("link", name="Start", exact=True)
    expect(start).to_be_visible()  # offered once stopped, without a reload
    expect(env_a.get_by_role("link", name="Stop", exact=True)).to_be_hidden()
    shot("env-a-stopped")
    start.click()
    page.click("input[type=submit][value='Yes, start']")
    expect(env_a.locator(".appsup-badge")).to_have_text("env_a: running", timeout=30_000)
    shot("env-a-running-again")

    # Visit: the chooser (two environments), the app's own admin on env_a, back to the chooser,
    # and from it back to the app's page.
    with context.expect_page() as opened:
        page.locator("#content a.appsup-visit").click()
    visit = opened.value
    expect(visit.get_by_role("link", name="Use env_a")).to_be_visible()
    visit.get_by_role("link", name="Use env_a").click()
    expect(visit.locator("#id_username")).to_be_visible()  # the hosted app's admin sign-in
    shot.page = visit  # the screenshots follow the visit's tab
    shot("visit-hosted-admin")
    visit.go_back()
    back = visit.get_by_role("link", name=re.compile("Back to .* in the supervisor's admin"))
    shot("visit-chooser")
    back.click()
    expect(visit.locator(".appsup-cockpit")).to_be_visible()
    visit.close()
    shot.page = page

    # Its log lines show the start on env_a (the live tail appends them).
    logs = page.locator("ol.appsup-log-lines[data-environment='env_a']")
    expect(logs).to_contain_text("started: database", timeout=15_000)
    shot("logs")

    # Delete with its data: nothing happens before the confirmation.
    page.locator("#content a.deletelink").click()
    expect(page.locator("#content")).to_contain_text("it runs there and is stopped now")
    assert _api_status(base, session, app_pk) == {"env_a": "running", "env_b": "running"}, "deleted unconfirmed"
    page.get_by_label("Also drop its database").check()
    shot("confirm-delete")
    page.click(f"input[type=submit][value='Yes, delete {name}']")
    expect(page.locator("ul.messagelist")).to_contain_text("deleted successfully")
    expect(page.locator("#result_list tbody tr", has=page.locator(f"span[title='{name}']"))).to_have_count(0)
    page.goto(f"/admin/apps_registry/auditentry/?app_name={name}")
    expect(page.locator("td.field-action_shown", has_text="Delete with data")).to_have_count(1)
    _no_horizontal_scroll(page, "audit list")
    _inside(page, page.locator("td.field-request_id_shown").first, "audit request id")
    _inside(page, page.locator("td.field-via").first, "audit via")
    shot("audit")
    page.goto("/admin/apps_registry/environment/")
    _no_horizontal_scroll(page, "environments list")
    for column in ("status", "last_heartbeat_age", "running", "enabled_shown"):
        _inside(page, page.locator(f"td.field-{column}").first, f"environments {column}")
    shot("environments")
    assert shot.errors == [], shot.errors
    context.close()

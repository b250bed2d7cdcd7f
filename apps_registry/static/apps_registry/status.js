// Live statuses on the Applications and Environments lists and on an app's page (its cockpit):
// polls the staff-only JSON status endpoint every 2 s and rewrites in place (no page reload)
// the badges, the operation buttons their statuses offer (data-from: the statuses that offer a
// button; empty, always offered), the app page's "since" and error cells, the Environments
// list's heartbeat age and running apps, and the Applications list's "N new — reload" notice.
// Queued apps show their position in the start queue, errors their message as a tooltip.
// The admin puts this script in <head>: wait for <body> before looking at it.
function appsupStatusInit() {
  "use strict";
  var ENDPOINT = "/admin/app-supervisor/status.json";
  var INTERVAL_MS = 2000;
  var body = document.body;
  var cockpit = document.querySelector(".appsup-cockpit[data-app-pk]");
  var kind = body.classList.contains("model-application") ? "apps"
    : body.classList.contains("model-environment") ? "environments" : null;
  if (!kind || !(body.classList.contains("change-list") || cockpit)) return;
  var notice = document.getElementById("appsup-new-rows");

  function rows() {
    var found = {};
    if (cockpit) {
      found[cockpit.dataset.appPk] = cockpit;
      return found;
    }
    document.querySelectorAll("#result_list tbody tr").forEach(function (tr) {
      var box = tr.querySelector("input.action-select");
      if (box) found[box.value] = tr;
    });
    return found;
  }

  function paint(badge, status, label, extra, tooltip) {
    badge.className = "appsup-badge appsup-" + status;
    badge.dataset.status = status;
    var text = (label ? label + ": " : "") + status + (extra || "");
    badge.textContent = text;
    badge.title = tooltip || text;
  }

  function statusOf(badge) {
    if (badge.dataset.status) return badge.dataset.status;
    var text = badge.textContent;
    return text.slice(text.indexOf(":") + 1).trim().split(" ")[0];
  }

  // Show the buttons in ``scope`` that one of its badges' statuses offers.
  function offer(scope, badges) {
    var statuses = Array.prototype.map.call(badges, statusOf);
    scope.querySelectorAll("a.appsup-op[data-from]").forEach(function (button) {
      var from = button.dataset.from.split(" ").filter(Boolean);
      button.hidden = from.length > 0 && !statuses.some(function (s) { return from.indexOf(s) >= 0; });
    });
  }

  function updateApp(container, statuses) {
    container.querySelectorAll(".appsup-badge").forEach(function (badge) {
      var env = badge.dataset.environment || (badge.title || "").split(":")[0];
      var s = statuses[env];
      if (!s) return;
      var extra = s.position ? " #" + s.position : "";
      var why = s.detail || s.error;  // why it is shown unknown, or the last error
      paint(badge, s.status, env, extra, why ? env + ": " + s.status + " (" + why + ")" : "");
      var tr = cockpit && badge.closest("tr[data-environment]");
      if (tr) {
        tr.querySelector(".appsup-since").textContent = s.since || "";
        tr.querySelector(".appsup-error-text").textContent = s.error || s.detail || "";
        offer(tr, [badge]);
      }
    });
    if (cockpit) {
      var forAll = cockpit.querySelector(".appsup-for-all");
      if (forAll) offer(forAll, cockpit.querySelectorAll(".appsup-badge"));
    } else {
      offer(container, container.querySelectorAll(".appsup-badge"));
    }
  }

  function setText(tr, selector, text) {
    var cell = tr.querySelector(selector);
    if (!cell || text === undefined) return;
    var span = cell.querySelector(".appsup-ellipsis") || cell;
    span.textContent = text;
    if (span !== cell) span.title = text;
  }

  function update(data, byPk) {
    Object.keys(data.apps || {}).forEach(function (pk) {
      if (byPk[pk]) updateApp(byPk[pk], data.apps[pk].statuses);
    });
    Object.keys(data.environments || {}).forEach(function (pk) {
      var tr = byPk[pk];
      if (!tr) return;
      var env = data.environments[pk];
      var badge = tr.querySelector(".appsup-badge");
      if (badge) paint(badge, env.status, "", "", "");
      setText(tr, "td.field-last_heartbeat_age", env.last_heartbeat);
      setText(tr, "td.field-running", env.running);
    });
    if (notice && data.new_apps) {
      notice.hidden = false;
      notice.textContent = "";
      var link = document.createElement("a");
      link.href = window.location.href;
      link.textContent = data.new_apps + " new — reload";
      notice.append(link);
    }
  }

  function poll() {
    var byPk = rows();
    var pks = Object.keys(byPk);
    if (document.hidden || (!pks.length && !notice)) return;
    var query = "?" + kind + "=" + pks.join(",");
    if (notice) query += "&newer_than=" + encodeURIComponent(notice.dataset.newest || "0");
    fetch(ENDPOINT + query, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data) update(data, byPk); })
      .catch(function () { /* keep the last known badges; try again next tick */ });
  }

  poll();
  window.setInterval(poll, INTERVAL_MS);
}
if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", appsupStatusInit);
} else {
  appsupStatusInit();
}

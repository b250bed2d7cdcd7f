// Live status badges on the Applications and Environments lists: polls the staff-only JSON
// status endpoint every 2 s and rewrites the badges in place (no page reload). Queued apps
// show their position in the start queue, errors their message as a tooltip.
// The admin puts this script in <head>: wait for <body> before looking at it.
function appsupStatusInit() {
  "use strict";
  var ENDPOINT = "/admin/app-supervisor/status.json";
  var INTERVAL_MS = 2000;
  var body = document.body;
  var kind = body.classList.contains("model-application") ? "apps"
    : body.classList.contains("model-environment") ? "environments" : null;
  if (!kind || !body.classList.contains("change-list")) return;

  function rows() {
    var found = {};
    document.querySelectorAll("#result_list tbody tr").forEach(function (tr) {
      var box = tr.querySelector("input.action-select");
      if (box) found[box.value] = tr;
    });
    return found;
  }

  function paint(badge, status, label, extra, tooltip) {
    badge.className = "appsup-badge appsup-" + status;
    var text = (label ? label + ": " : "") + status + (extra || "");
    badge.textContent = text;
    badge.title = tooltip || text;
  }

  function update(data, byPk) {
    Object.keys(data.apps || {}).forEach(function (pk) {
      var tr = byPk[pk];
      if (!tr) return;
      var statuses = data.apps[pk].statuses;
      tr.querySelectorAll(".appsup-badge").forEach(function (badge) {
        var env = (badge.title || "").split(":")[0];
        var s = statuses[env];
        if (!s) return;
        var extra = s.position ? " #" + s.position : "";
        var why = s.detail || s.error;  // why it is shown unknown, or the last error
        paint(badge, s.status, env, extra, why ? env + ": " + s.status + " (" + why + ")" : "");
      });
    });
    Object.keys(data.environments || {}).forEach(function (pk) {
      var tr = byPk[pk];
      var badge = tr && tr.querySelector(".appsup-badge");
      if (badge) paint(badge, data.environments[pk].status, "", "", "");
    });
  }

  function poll() {
    var byPk = rows();
    var pks = Object.keys(byPk);
    if (!pks.length || document.hidden) return;
    fetch(ENDPOINT + "?" + kind + "=" + pks.join(","), { credentials: "same-origin", cache: "no-store" })
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

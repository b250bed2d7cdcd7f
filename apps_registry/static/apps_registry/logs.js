// Live tail of the app page's log lines: every 3 s, asks the staff-only JSON endpoint for the
// lines after the last one shown, per environment, and appends them (as text: the lines are a
// worker's untrusted words). Keeps the last 200 lines of each environment on the page.
function appsupLogsInit() {
  "use strict";
  var ENDPOINT = "/admin/app-supervisor/logs.json";
  var INTERVAL_MS = 3000;
  var KEEP = 200;
  var lists = document.querySelectorAll("ol.appsup-log-lines[data-app]");
  if (!lists.length) return;

  function append(list, line) {
    var empty = list.querySelector(".appsup-log-empty");
    if (empty) empty.remove();
    var li = document.createElement("li");
    li.className = "appsup-log-" + line.level;
    var time = document.createElement("time");
    time.textContent = line.at.replace("T", " ").slice(0, 19);
    var level = document.createElement("b");
    level.textContent = line.level;
    li.append(time, " ", level, " ", line.message);
    list.appendChild(li);
    while (list.children.length > KEEP) list.firstElementChild.remove();
  }

  function poll() {
    if (document.hidden) return;
    lists.forEach(function (list) {
      var query = "?app=" + encodeURIComponent(list.dataset.app) +
        "&environment=" + encodeURIComponent(list.dataset.environment) +
        "&since=" + encodeURIComponent(list.dataset.since || "0");
      fetch(ENDPOINT + query, { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) {
          if (!data) return;
          data.lines.forEach(function (line) {
            append(list, line);
            list.dataset.since = line.id;
          });
        })
        .catch(function () { /* keep what is shown; try again next tick */ });
    });
  }

  setInterval(poll, INTERVAL_MS);
}
if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", appsupLogsInit);
} else {
  appsupLogsInit();
}

"""Run every benchmark in bench/ and write their figures into docs/benchmarks.md.

    bash bench/run [--only NAME,...] [--skip NAME,...] [--quick] [--no-write]

Each ``bench/*.py`` script (every one present, not a fixed list) runs in turn; its output goes
to ``test-artifacts/bench/<name>.out``, the JSON documents it prints are parsed, and its figures
are kept in ``test-artifacts/bench/<name>.json`` (so ``--only`` reruns one benchmark and the
report still shows the others' latest figures, each with its date). The fault
suite (tests/faults) runs too, for its measured recovery times. Then the block between the
``bench/run`` markers at the top of docs/benchmarks.md is rewritten: each figure, its target,
whether it was met, the machine, and the command that reproduces it. The hand-written sections
below the block (set-up details, earlier runs, readings) are left as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DOC = ROOT / "docs" / "benchmarks.md"
OUT = ROOT / "test-artifacts" / "bench"
RECOVERY = ROOT / "test-artifacts" / "faults" / "recovery.json"
BEGIN, END = "<!-- bench/run: begin (generated; edit bench/report.py, not this block) -->", "<!-- bench/run: end -->"
PYTHON = str(ROOT / ".venv" / "bin" / "python")
# A Redis database number for every bench that takes one (BENCH_REDIS_DB); unset, each bench
# uses its own default (they differ, so that two benches never share one).
BENCH_REDIS_DB = os.environ.get("BENCH_REDIS_DB", "")
FAULTS_REDIS_DB = os.environ.get("BENCH_FAULTS_REDIS_DB", "15")

Figure = tuple[str, str, str, bool | None]  # (figure, measured, target, met or None)


def json_documents(text: str) -> list:
    """Every JSON object or array printed at the start of a line, in order."""
    decoder, found, index = json.JSONDecoder(), [], 0
    for match in re.finditer(r"(?m)^[\[{]", text):
        if match.start() < index:
            continue
        try:
            value, end = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        found.append(value)
        index = end
    return found


def _dicts(docs: list) -> list[dict]:
    flat: list[dict] = []
    for doc in docs:
        flat.extend(d for d in (doc if isinstance(doc, list) else [doc]) if isinstance(d, dict))
    return flat


def _met(value: float, limit: float, at_most: bool = True) -> bool:
    return value <= limit if at_most else value >= limit


# --- What each known script's output means: its figures and their targets ----------------------


def command_roundtrip(docs: list) -> list[Figure]:
    figures = []
    for row in _dicts(docs):
        if "variant" not in row:
            continue
        label = row["variant"].split(":")[0]
        target = label == "channel"
        figures.append(
            (
                f"command round trip, {row['variant']}: p50",
                f"{row['p50_ms']} ms",
                "≤ 20 ms" if target else "",
                _met(row["p50_ms"], 20) if target else None,
            )
        )
        figures.append(
            (
                f"command round trip, {row['variant']}: p99",
                f"{row['p99_ms']} ms",
                "≤ 100 ms" if target else "",
                _met(row["p99_ms"], 100) if target else None,
            )
        )
    return figures


def hosted_apps(docs: list) -> list[Figure]:
    figures = []
    for row in _dicts(docs):
        if "rss_per_app_mb" not in row:
            continue
        figures.append(
            (
                f"{row['apps']} hosted apps ({row['database']}): resident memory per app",
                f"{row['rss_per_app_mb']} MB",
                "≤ 5 MB",
                _met(row["rss_per_app_mb"], 5),
            )
        )
        cold = row["cold_first_request_ms"]
        figures.append(("first request to a cold app, p50 / p99", f"{cold['p50']} / {cold['p99']} ms", "", None))
        warm = row["warm_request_ms"]
        figures.append(("the same page warm, p50 / p99", f"{warm['p50']} / {warm['p99']} ms", "", None))
    return figures


def proxy_bench(docs: list) -> list[Figure]:
    figures = []
    for row in _dicts(docs):
        direct = {page: row.get(f"{page}.direct") for page in ("changelist", "tiny")}
        for key, value in row.items():
            if not isinstance(value, dict) or "." not in key or key.endswith(".direct"):
                continue
            page, target = key.split(".", 1)
            base = direct.get(page)
            if not base or not base.get("rps"):
                continue
            ratio = value["rps"] / base["rps"]
            cpu = (
                base["worker_cpu_ms"] / (base["worker_cpu_ms"] + value["proxy_cpu_ms"]) if value["proxy_cpu_ms"] else 1
            )
            checked = page == "changelist" and target == "supervisor"
            figures.append(
                (
                    f"proxy, {page} page via {target}: req/s ratio to direct (CPU-bound ratio)",
                    f"{ratio:.2f} ({cpu:.2f})",
                    "≥ 0.8" if checked else ("reference" if target == "nginx" else ""),
                    _met(ratio, 0.8, at_most=False) if checked else None,
                )
            )
            figures.append((f"proxy, {page} page via {target}: p50", f"{value['p50_ms']} ms", "", None))
    return figures


def queue_bench(docs: list) -> list[Figure]:
    figures = []
    for row in _dicts(docs):
        if "queue_workers" in row and "wall_s" in row:
            cpu = (
                f"; machine {row['cpu_busy_pct']} % busy, {row['cpu_ms_per_start']} ms CPU per start"
                if "cpu_busy_pct" in row
                else ""
            )
            figures.append(
                (
                    f"start queue, {row['apps']} apps × 2 environments, {row['queue_workers']} queue worker(s): wall",
                    f"{row['wall_s']} s ({row['starts_per_s']} starts/s{cpu})",
                    "",
                    None,
                )
            )
        if "ratio" in row:
            figures.append(
                (f"start queue, wall ratio {row['compared']}", f"{row['ratio']}", "≤ 0.5", _met(row["ratio"], 0.5))
            )
    return figures


def api_bench(docs: list) -> list[Figure]:
    return [
        (
            f"API GET /api/v1/apps at {row['apps']} apps, {row['clients']} clients",
            f"{row['requests_per_s']} req/s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms",
            "",
            None,
        )
        for row in _dicts(docs)
        if "requests_per_s" in row
    ]


def admin_list(docs: list) -> list[Figure]:
    figures = []
    for row in _dicts(docs):
        for page in row.get("pages", []):
            figures.append(
                (
                    f"admin at {row['apps']:,} apps × {row['environments']} environments, {page['page']}",
                    f"p50 {page['p50_ms']} ms, p99 {page['p99_ms']} ms, {page['queries']} queries",
                    "queries independent of the number of apps",
                    None,
                )
            )
    return figures


def heartbeats(docs: list) -> list[Figure]:
    figures = []
    for row in _dicts(docs):
        if "beats_per_s" not in row:
            continue
        label = f"{row['environments']} environments heartbeating every second"
        figures += [
            (f"{label}: supervisor CPU", f"{row['supervisor_cpu_pct_of_one_core']} % of a core", "", None),
            (f"{label}: Redis CPU", f"{row['redis_cpu_pct_of_one_core']} % of a core", "", None),
            (
                f"{label}: status endpoint (applies the events), p50 / p99",
                f"{row['status_endpoint_p50_ms']} / {row['status_endpoint_p99_ms']} ms",
                "",
                None,
            ),
            (
                f"{label}: online at the end, events backlog",
                f"{row['online_at_end']} / {row['environments']}, {row['events_backlog_at_end']}",
                "all online",
                row["online_at_end"] == row["environments"],
            ),
        ]
    return figures


def convergence_bench(docs: list) -> list[Figure]:
    figures = []
    for row in _dicts(docs):
        if "back_online_s" in row:
            figures.append(
                (
                    f"environment back online → its {row['apps']} placements converged"
                    f" ({row['verb']}s asked while offline)",
                    f"{row['back_online_s']} s (same {row['verb']}s while online: {row['reference_online_s']} s,"
                    f" ratio {row['ratio']}; outcomes {', '.join(row['outcomes'])})",
                    "",
                    None,
                )
            )
        if "patch_to_running_p50_ms" in row:
            figures.append(
                (
                    "PATCH adds an environment → running there, p50",
                    f"{row['patch_to_running_p50_ms']} ms (a start asked there directly:"
                    f" {row['reference_start_there_p50_ms']} ms, ratio {row['ratio']})",
                    "",
                    None,
                )
            )
    return figures


def slow_clients(docs: list) -> list[Figure]:
    """Per worker class (gthread is the reference measured in the same run): each probe's share
    answered and p50 while slow-header clients hold connections (target ≥ 90 %, p50 ≤ 1 s)."""
    figures = []
    for row in _dicts(docs):
        if "worker_class" not in row:
            continue
        for probe, seen in row.items():
            if not isinstance(seen, dict) or "ok_share" not in seen:
                continue
            reference = row["worker_class"] == "gthread"  # the former default, for comparison
            met = seen["ok_share"] >= 0.9 and (seen["p50_ms"] or 10**9) <= 1000
            figures.append(
                (
                    f"{row['clients']} slow-header clients, supervisor on {row['worker_class']}: {probe}",
                    f"{round(100 * seen['ok_share'])} % answered, p50 {seen['p50_ms']} ms",
                    "reference (former default)" if reference else "≥ 90 %, p50 ≤ 1 s",
                    None if reference else met,
                )
            )
    return figures


def lifecycle_bench(docs: list) -> list[Figure]:
    figures = []
    for row in _dicts(docs):
        figure = row.get("figure")
        if figure == "reference: stop + start":
            figures.append(
                (
                    "reference: stop + start of one app (same run)",
                    f"{row['wall_s']} s, {row['failed_requests']} of {row['requests']} requests failed",
                    "",
                    None,
                )
            )
        elif figure == "move":
            figures.append(
                (
                    f"move of one app under 20 req/s ({row['moves']} moves): p50 / max",
                    f"{row['p50_s']} s / {row['max_s']} s (drain wait {row['drain_wait_s']} s included)",
                    "",
                    None,
                )
            )
            figures.append(
                (
                    "move: failed requests; longest request during the moves",
                    f"{row['failed_requests']} of {row['requests']}; {row['longest_request_ms']} ms",
                    "0 failed",
                    row["failed_requests"] == 0,
                )
            )
        elif figure == "drain":
            figures.append(
                (
                    f"drain of {row['apps']} apps (concurrency {row['concurrency']})",
                    f"{row['wall_s']} s ({row['apps_per_s']} apps/s), {row['status']}, {row['left_on_env_a']} left",
                    "empty",
                    row["left_on_env_a"] == 0 and row["status"] == "succeeded",
                )
            )
        elif "ratio" in row:
            figures.append((f"lifecycle, {row['compared']}", str(row["ratio"]), "", None))
    return figures


def backup_bench(docs: list) -> list[Figure]:
    """Per-app backup and restore against plain pg_dump/pg_restore (+ tar) on the same data, one run."""
    figures = []
    for row in _dicts(docs):
        if row.get("bench") != "backup":
            continue
        data = f"{row['data_mb']} MB ({row['rows']:,} rows, {row['files']} files), median of {row['rounds']}"
        figures += [
            (
                f"app backup vs pg_dump -Fc + tar, {data}",
                f"{row['backup_mb_per_s']} MB/s vs {row['pg_dump_mb_per_s']} MB/s, ratio {row['backup_ratio']}",
                "≥ 0.8×",
                _met(row["backup_ratio"], 0.8, at_most=False),
            ),
            (
                f"app restore vs pg_restore + tar, {data}",
                f"{row['restore_mb_per_s']} MB/s vs {row['pg_restore_mb_per_s']} MB/s, ratio {row['restore_ratio']}",
                "≥ 0.8×",
                _met(row["restore_ratio"], 0.8, at_most=False),
            ),
        ]
    return figures


def app_figures_bench(docs: list) -> list[Figure]:
    figures = []
    for row in _dicts(docs):
        if "record_ratio" in row:
            figures.append(
                (
                    "per-app figures: recording one request (µs on the request thread), ratio to its log line",
                    f"{row['figures_record_us']} µs vs {row['log_record_us']} µs: {row['record_ratio']}×",
                    "≤ 1",
                    _met(row["record_ratio"], 1.0),
                )
            )
            figures.append(
                (
                    "per-app figures: writer drain into Redis, ratio to the log writer",
                    f"{row['figures_drain_per_s']}/s vs {row['log_drain_per_s']}/s: {row['drain_ratio']}× "
                    f"({row['dropped']} dropped)",
                    "≥ 1",
                    _met(row["drain_ratio"], 1.0, at_most=False),
                )
            )
    return figures


def _probe_text(seen: dict, idle: dict) -> str:
    return (
        f"p50 {seen['p50_ms']} ms against {idle['p50_ms']} ms idle (×{seen.get('ratio', '?')}),"
        f" {seen['failures']} failed of {seen['answered'] + seen['failures']}"
    )


def _probe_met(seen: dict) -> bool:
    return seen["failures"] == 0 and seen.get("ratio") is not None and seen["ratio"] <= 2


def edge_bench(docs: list) -> list[Figure]:
    """bench/edge_bench.py (issue 14): each figure against its reference from the same run."""
    figures: list[Figure] = []
    for row in _dicts(docs):
        kind = row.get("figure")
        if kind == "kept_alive":
            held, idle = row["admin"]["held"], row["admin"]["idle"]
            why = f"; stopped: {row['stopped_because']}" if row["stopped_because"] else ""
            figures.append(
                (
                    f"{row['asked']:,} idle kept-alive connections to one supervisor (2 processes, keepalive"
                    f" {row['keepalive_s']} s, ulimit -n {row['nofile']:,}): held; admin while held",
                    f"{row['held_at_end']:,} held, {row['rss_kib_per_connection']} KiB each{why}; admin "
                    + _probe_text(held, idle),
                    "≥ 5,000 held, admin p50 ≤ 2× idle",
                    row["held_at_end"] >= 5000 and _probe_met(held),
                )
            )
        elif kind == "noisy_neighbour":
            for probe, windows in row["probes"].items():
                via = "nginx" if probe.endswith("via nginx") else "supervisor"
                seen = windows[f"loaded via {via}"]
                reference = via == "nginx"
                figures.append(
                    (
                        f"one app under {row['clients']} clients through {via}: {probe}",
                        _probe_text(seen, windows["idle"]),
                        "reference (no per-app cap)" if reference else "≤ 2× idle, no failures (×12 before)",
                        None if reference else _probe_met(seen),
                    )
                )
            load = row["load"]["supervisor"]
            figures.append(
                (
                    "the loaded app through the supervisor: its answers",
                    f"{load['rps']} req/s, {load['not_2xx']} refused busy (503)",
                    "",
                    None,
                )
            )
        elif kind == "slow_readers":
            statuses = ", ".join(f"{count} × {status}" for status, count in sorted(row["reader_statuses"].items()))
            figures.append((f"{row['readers']} slow readers of a 15 MiB attachment: their answers", statuses, "", None))
            for probe, windows in row["probes"].items():
                figures.append(
                    (
                        f"{row['readers']} slow readers of a 15 MiB attachment: {probe}",
                        _probe_text(windows["slow readers"], windows["idle"]),
                        "≤ 2× idle, no failures",
                        _probe_met(windows["slow readers"]),
                    )
                )
        elif kind == "throughput":
            for page, limit in (("changelist", 0.9), ("tiny", 0.85)):
                for target, seen in row[page].items():
                    if target == "direct":
                        continue
                    checked = target == "supervisor"
                    figures.append(
                        (
                            f"{page} page, {target}: req/s ratio to direct (gevent worker)",
                            f"{seen['ratio']:.2f} ({seen['rps']} against {row[page]['direct']['rps']} req/s)",
                            f"≥ {limit}" if checked else "reference",
                            _met(seen["ratio"], limit, at_most=False) if checked else None,
                        )
                    )
    return figures


def generic(docs: list) -> list[Figure]:
    """A script this report does not know yet: its top-level numbers, without targets."""
    figures = []
    for row in _dicts(docs):
        for key, value in row.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                figures.append((key, str(value), row.get("target", ""), None))
    return figures


INTERPRETERS: dict[str, Callable[[list], list[Figure]]] = {
    "command_roundtrip": command_roundtrip,
    "hosted_apps": hosted_apps,
    "proxy_bench": proxy_bench,
    "queue_bench": queue_bench,
    "api_bench": api_bench,
    "admin_list": admin_list,
    "heartbeats": heartbeats,
    "convergence_bench": convergence_bench,
    "slow_clients": slow_clients,
    "lifecycle_bench": lifecycle_bench,
    "backup_bench": backup_bench,
    "app_figures_bench": app_figures_bench,
    "edge_bench": edge_bench,
}
# Smaller runs for --quick (a smoke run of the whole report, not figures to publish).
QUICK_ARGS = {
    "command_roundtrip": ["--commands", "50"],
    "hosted_apps": ["--apps", "20"],
    "proxy_bench": ["--seconds", "3", "--rounds", "1"],
    "queue_bench": ["--apps", "10"],
    "api_bench": ["--apps", "200", "--seconds", "5"],
    "admin_list": ["--apps", "1000", "--requests", "5"],
    "heartbeats": ["--environments", "50", "--seconds", "8"],
    "convergence_bench": ["--apps", "20", "--patches", "3"],
    "slow_clients": ["--clients", "50", "--seconds", "8"],
    "lifecycle_bench": ["--moves", "3", "--apps", "10"],
    "app_figures_bench": ["--requests", "6000"],
    "backup_bench": ["--rows", "50000", "--files", "20", "--rounds", "1"],
    "edge_bench": ["--window", "2", "--rounds", "1", "--connections", "500", "--readers", "20", "--seconds", "2"],
}


def script_args(name: str, script: Path, quick: bool) -> list[str]:
    args = list(QUICK_ARGS.get(name, [])) if quick else []
    if BENCH_REDIS_DB and "--redis-db" in script.read_text():
        args += ["--redis-db", BENCH_REDIS_DB]
    return args


# --- Running ----------------------------------------------------------------------------------


def run_script(name: str, command: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, float]:
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"bench/run: {name}: {' '.join(command)}", flush=True)
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        code, output = done.returncode, done.stdout + "\n--- stderr ---\n" + done.stderr
    except subprocess.TimeoutExpired as error:
        code, output = -1, f"timed out after {timeout:.0f} s\n{error.stdout or ''}"
    seconds = time.monotonic() - started
    (OUT / f"{name}.out").write_text(output)
    print(f"bench/run: {name}: exit {code} in {seconds:.0f} s (output in {OUT.relative_to(ROOT)}/{name}.out)")
    return code, output, seconds


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kb / 1024 / 1024:.0f} GB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{os.cpu_count()} × {cpu}{memory}; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}"
    )


def render(rows: list[dict], faults: dict | None, started: str, load: tuple[float, float]) -> str:
    lines = [
        BEGIN,
        "## Latest run of every benchmark",
        "",
        f"Generated by `bash bench/run` (or `make bench`) on {started}. Machine: {machine()}. "
        f"Load average (1 min) {load[0]:.1f} before, {load[1]:.1f} after: the machine is shared, so trust ratios "
        "and orders of magnitude more than absolute figures. Raw outputs: `test-artifacts/bench/`.",
        "",
        "| benchmark | figure | measured | target | met | reproduce |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        if row.get("published"):
            lines += row["published"]
            continue
        command = f"`{row['command']}`" + (f" ({row['finished']})" if row.get("finished") else "")
        if row["code"] is None:
            lines.append(f"| {row['name']} | not run yet | — | — | — | {command} |")
            continue
        if row["code"] != 0:
            lines.append(f"| {row['name']} | did not finish (exit {row['code']}) | — | — | — | {command} |")
            continue
        if not row["figures"]:
            lines.append(f"| {row['name']} | no figures in its output | — | — | — | {command} |")
        for index, (figure, measured, target, met) in enumerate(row["figures"]):
            verdict = "—" if met is None else ("yes" if met else "**no**")
            shown = command if index == 0 else "″"
            lines.append(f"| {row['name']} | {figure} | {measured} | {target or '—'} | {verdict} | {shown} |")
    lines += ["", "### Measured recovery (fault injection, tests/faults)", ""]
    if faults:
        lines += [
            f"Measured {faults.get('measured_at', '')} with `TEST_REDIS_DB={FAULTS_REDIS_DB} .venv/bin/python -m "
            "pytest tests/faults -s` (a private cluster: supervisor, queue worker, env_a and env_b, a private "
            "redis-server, PostgreSQL; proxied GETs of an app's login page, 10/s per stream, all the while).",
            "",
            "| fault | requests during | failed | failing for | recovered after | details |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for result in faults.get("results", []):
            details = ", ".join(
                f"{k}={v}"
                for k, v in result.items()
                if k not in ("fault", "stream", "requests", "failed", "failed_share", "failing_for_s", "recovery_s")
            )
            lines.append(
                f"| {result['fault']} | {result['requests']} | {result['failed']} ({result['failed_share']:.0%}) "
                f"| {result['failing_for_s']} s | {result['recovery_s']} s | {details} |"
            )
    else:
        lines.append("The fault suite did not run or wrote no figures (see test-artifacts/bench/faults.out).")
    lines += ["", END]
    return "\n".join(lines)


def published_rows() -> dict[str, list[str]]:
    """The table rows the doc's generated block holds now, by benchmark (those it measured)."""
    text = DOC.read_text() if DOC.exists() else ""
    if BEGIN not in text or END not in text:
        return {}
    rows: dict[str, list[str]] = {}
    for line in text.split(BEGIN, 1)[1].split(END, 1)[0].splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) > 3 and cells[1] and cells[1] not in ("benchmark", "---") and cells[2] != "not run yet":
            rows.setdefault(cells[1], []).append(line)
    return rows


def write_doc(block: str) -> None:
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:  # first run: after the title and its introduction, before the first section
        match = re.search(r"(?m)^## ", text)
        at = match.start() if match else len(text)
        text = text[:at] + block + "\n\n" + text[at:]
    DOC.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated names (script names without .py, or faults)")
    parser.add_argument("--skip", default="", help="comma-separated names to leave out")
    parser.add_argument("--quick", action="store_true", help="small runs, to check the whole chain quickly")
    parser.add_argument("--no-write", action="store_true", help="print the block instead of writing the doc")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per benchmark")
    args = parser.parse_args()
    only = {n for n in args.only.split(",") if n}
    skip = {n for n in args.skip.split(",") if n}
    wanted = lambda name: (not only or name in only) and name not in skip  # noqa: E731

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()[0]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rows: list[dict] = []
    for script in sorted(BENCH.glob("*.py")):
        name = script.stem
        if script.name == Path(__file__).name or name.startswith("_") or not wanted(name):
            continue
        extra = script_args(name, script, args.quick)
        command = [PYTHON, str(script.relative_to(ROOT)), *extra]
        code, output, seconds = run_script(name, command, env, args.timeout)
        interpret = INTERPRETERS.get(name, generic)
        try:
            figures = interpret(json_documents(output)) if code == 0 else []
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as error:
            figures = [("output not understood", repr(error)[:80], "", False)]
        shown = " ".join([".venv/bin/python", str(script.relative_to(ROOT)), *extra])
        row = {"name": name, "code": code, "figures": figures, "command": shown, "seconds": round(seconds)}
        row["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        (OUT / f"{name}.json").write_text(json.dumps(row, indent=1))
    # Every benchmark present, from its latest stored run (this one's or an earlier one's) or,
    # on a checkout without test-artifacts/, from the rows the doc already publishes for it.
    published = published_rows()
    for script in sorted(BENCH.glob("*.py")):
        if script.name == Path(__file__).name or script.stem.startswith("_"):
            continue
        stored = OUT / f"{script.stem}.json"
        if stored.exists():
            rows.append(json.loads(stored.read_text()))
        elif published.get(script.stem):
            rows.append({"name": script.stem, "code": None, "figures": [], "published": published[script.stem]})
        else:
            command = f".venv/bin/python {script.relative_to(ROOT)}"
            rows.append({"name": script.stem, "code": None, "figures": [], "command": command})

    faults = None
    if wanted("faults"):
        command = [PYTHON, "-m", "pytest", "tests/faults", "-q", "-s", "-p", "no:randomly"]
        code, _output, _seconds = run_script("faults", command, {**env, "TEST_REDIS_DB": FAULTS_REDIS_DB}, 900)
        if code == 0 and RECOVERY.exists():
            faults = json.loads(RECOVERY.read_text())
    elif RECOVERY.exists():
        faults = json.loads(RECOVERY.read_text())

    block = render(rows, faults, started, (load_before, os.getloadavg()[0]))
    if args.no_write:
        print(block)
    else:
        write_doc(block)
        print(f"bench/run: wrote {DOC.relative_to(ROOT)}")
    missed = [f"{r['name']}: {f[0]}" for r in rows for f in r["figures"] if f[3] is False]
    failed = [r["name"] for r in rows if r["code"] not in (0, None)]
    for line in missed:
        print(f"bench/run: target missed: {line}")
    if failed:
        print(f"bench/run: did not finish: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The dashboard's page of an experiment with 1,000 runs in headless Chromium, against the
same page of an experiment with 10 runs, side by side.

Both experiments are recorded straight into the store of a fresh data dir
(tests/support/uiseed.py: nine in ten runs succeeded with a ``score`` metric, every tenth
failed), then served by ``mlexp serve`` (one worker) as a process of its own. Debian's
Chromium (``/usr/bin/chromium``, or ``--chromium``), driven by Playwright's sync API, loads
each page once unmeasured (so the vendored assets are cached, as a person's tab has them,
and the service has answered before), then in each repetition, for the big experiment and
then the small one:

- full: from ``about:blank``, navigation to ``/ui#/experiments/<id>`` until
  ``main[data-ready]`` names the route: the shell (never cached), its assets (the project's
  revalidated, the vendored ones from the cache), and the page's API calls; timed here
  (from the ``goto``, so a renderer's start is in it) and by the page's own clock (from its
  navigation start, read once ready was seen), with the page's DOMContentLoaded (its
  script has run and asked for the data: what any page of the dashboard costs first);
- render: ``main[data-render-ms]``, the page's own work (the runs table and both charts
  built once the data was there);
- fetch: the page's ``/experiments/<id>/compare`` request as the browser timed it
  (Resource Timing);
- API: the answers the page needs, timed alone with httpx (one keep-alive connection, one
  after the other): ``GET /experiments/<id>/compare?limit=1000`` (the runs table, the
  largest), ``GET /experiments/<id>``, ``GET /sweeps?experiment_id=<id>&limit=1000``; the
  page asks for the three at once (and ``/healthz`` for its nav, not waited for);
- the service's CPU time per full load (all its threads; it depends far less on how busy
  the machine is than elapsed times do; /proc counts it in ticks of 10 ms).

Prints each repetition, then the medians, what 1,000 runs cost over 10, and whether the
median full load of the big page is under the issue's second (issue 12: "an experiment with
1,000 runs renders in under 1 s in headless Chromium on this machine").

    .venv/bin/python bench/ui_render.py [--runs 1000] [--small 10] [--reps 7] [--width 390]

Needs Debian's Chromium (``apt-get install chromium``) and the dev group (Playwright).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from common import ServiceClient, cpu_seconds, median, service

from controller.settings import load_settings
from tests.support.uiseed import seed_experiment

TIMEOUT_MS = 60_000
TARGET_S = 1.0
PAGE_SIZE = 50  # rows the runs table shows at once (api/ui/static/app.js)


@dataclass(frozen=True)
class Load:
    full_ms: float  # navigation until main[data-ready], timed from here
    in_page_ms: float  # the same, as the page's clock has it (from its navigation start)
    dcl_ms: float  # DOMContentLoaded (app.js has run and asked for the data) on that clock
    render_ms: float  # main[data-render-ms]
    fetch_ms: float  # the compare request, as the browser timed it
    cpu_ms: float  # the service's CPU time over the load


@dataclass(frozen=True)
class Api:
    compare_ms: float
    experiment_ms: float
    sweeps_ms: float
    compare_kb: float

    @property
    def total_ms(self) -> float:
        return self.compare_ms + self.experiment_ms + self.sweeps_ms


@dataclass(frozen=True)
class Target:
    name: str
    experiment_id: str
    runs: int

    @property
    def route(self) -> str:
        return f"#/experiments/{self.experiment_id}"

    def api_paths(self) -> dict[str, str]:
        e = self.experiment_id
        return {
            "compare": f"/experiments/{e}/compare?limit=1000",
            "experiment": f"/experiments/{e}",
            "sweeps": f"/sweeps?experiment_id={e}&limit=1000",
        }


def load_page(page: Any, http: ServiceClient, target: Target) -> Load:
    url = str(http.base_url).rstrip("/")
    page.goto("about:blank")
    cpu_before = cpu_seconds(http.pid)
    began = time.perf_counter()
    # Not waiting for the load event: ready is what counts (its deferred scripts have run).
    page.goto(f"{url}/ui{target.route}", wait_until="commit")
    page.wait_for_selector(f'main[data-ready="{target.route}"]', timeout=TIMEOUT_MS)
    full = time.perf_counter() - began
    in_page = page.evaluate("() => performance.now()")
    dcl = page.evaluate(
        "() => performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"
    )
    cpu = cpu_seconds(http.pid) - cpu_before
    check(page, target)
    fetch_ms = page.evaluate(
        """() => Math.max(0, ...performance.getEntriesByType('resource')
             .filter(e => e.name.includes('/compare?')).map(e => e.duration))"""
    )
    return Load(
        full_ms=full * 1000,
        in_page_ms=float(in_page),
        dcl_ms=float(dcl),
        render_ms=float(page.get_attribute("main", "data-render-ms") or "nan"),
        fetch_ms=float(fetch_ms),
        cpu_ms=cpu * 1000,
    )


def check(page: Any, target: Target) -> None:
    """The page shows what was seeded (a benchmark of a broken page measures nothing)."""
    table = '[data-testid="runs-table"]'
    rows = page.get_attribute(table, "data-rows")
    shown = page.locator(f"{table} tbody tr").count()
    points = page.get_attribute('[data-testid="metric-chart"]', "data-points")
    succeeded = sum(1 for i in range(target.runs) if i % 10)
    expected = (str(target.runs), min(PAGE_SIZE, target.runs), str(succeeded))
    if (rows, shown, points) != expected:
        raise RuntimeError(
            f"{target.name}: the page shows rows={rows}, {shown} on screen, {points} points; "
            f"expected {expected}"
        )


def time_api(http: httpx.Client, target: Target) -> Api:
    took: dict[str, float] = {}
    size = 0
    for name, path in target.api_paths().items():
        began = time.perf_counter()
        response = http.get(path)
        took[name] = (time.perf_counter() - began) * 1000
        response.raise_for_status()
        if name == "compare":
            size = len(response.content)
    return Api(took["compare"], took["experiment"], took["sweeps"], size / 1024)


def what_the_page_fetched(page: Any) -> list[tuple[str, int, int, int]]:
    """(path, start ms, duration ms, bytes over the wire: 0 when from the cache)."""
    entries: list[tuple[str, int, int, int]] = page.evaluate(
        """() => [performance.getEntriesByType('navigation')[0]]
             .concat(performance.getEntriesByType('resource'))
             .map(e => ['/' + e.name.split('/').slice(3).join('/'), Math.round(e.startTime),
                        Math.round(e.duration), e.transferSize])"""
    )
    return entries


def load_line(load: Load) -> str:
    return (
        f"full {load.full_ms:6.1f} ms (in page {load.in_page_ms:6.1f}, DOMContentLoaded "
        f"{load.dcl_ms:5.0f})  "
        f"render {load.render_ms:5.0f} ms  "
        f"compare fetch {load.fetch_ms:6.1f} ms  service cpu {load.cpu_ms:6.1f} ms"
    )


def api_line(api: Api) -> str:
    return (
        f"API alone: compare {api.compare_ms:6.1f} ms ({api.compare_kb:.0f} KiB)  "
        f"experiment {api.experiment_ms:5.1f} ms  sweeps {api.sweeps_ms:5.1f} ms  "
        f"= {api.total_ms:6.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1000, help="runs of the big experiment")
    parser.add_argument("--small", type=int, default=10, help="runs of the comparison")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--width", type=int, default=1280, help="viewport width (390: narrow)")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    height = 844 if args.width <= 600 else 900
    if not Path(args.chromium).exists():
        raise SystemExit(f"{args.chromium} is missing: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="mlexp-bench-") as tmp:
        root = Path(tmp)
        settings = load_settings(
            data_dir=root / "data",
            config_file=root / "no-config.yaml",
            k8s_config_file=root / "no-k8s-config.yaml",
        )
        began = time.perf_counter()
        targets = [
            Target(f"{args.runs} runs", seed_experiment(settings, args.runs), args.runs),
            Target(f"{args.small} runs", seed_experiment(settings, args.small), args.small),
        ]
        print(
            f"seeded {args.runs} + {args.small} runs in {time.perf_counter() - began:.1f} s; "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
            f"viewport {args.width}x{height}; {args.reps} repetition(s) after a warm-up",
            flush=True,
        )
        with (
            service(
                settings.data_dir,
                config_file=str(settings.config_file),
                k8s_config_file=str(settings.k8s_config_file),
            ) as http,
            sync_playwright() as pw,
        ):
            browser = pw.chromium.launch(executable_path=args.chromium, headless=True)
            try:
                loads, apis = run(browser, http, targets, args, height)
            finally:
                browser.close()
    summarize(targets, loads, apis)


def run(
    browser: Any, http: ServiceClient, targets: list[Target], args: argparse.Namespace, height: int
) -> tuple[dict[str, list[Load]], dict[str, list[Api]]]:
    errors: list[str] = []
    pages = {}
    for target in targets:  # a tab each, so each page's cache and timings are its own
        context = browser.new_context(viewport={"width": args.width, "height": height})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
        pages[target.name] = page
    # Warm-up, unmeasured: the assets cached, the service (and this client) having answered.
    for target in targets:
        load_page(pages[target.name], http, target)
        time_api(http, target)
    loads: dict[str, list[Load]] = {t.name: [] for t in targets}
    apis: dict[str, list[Api]] = {t.name: [] for t in targets}
    for rep in range(args.reps):
        print(f"rep {rep + 1}:", flush=True)
        for target in targets:
            loads[target.name].append(load_page(pages[target.name], http, target))
            apis[target.name].append(time_api(http, target))
            print(f"  {target.name:<10} {load_line(loads[target.name][-1])}", flush=True)
            print(f"  {'':<10} {api_line(apis[target.name][-1])}", flush=True)
    print("what the page fetched on its last load (path, start ms, duration ms, bytes):")
    for target in targets:
        print(f"  {target.name}:")
        for entry in what_the_page_fetched(pages[target.name]):
            print(f"    {entry[0]:<62} {entry[1]:5d} {entry[2]:5d} {entry[3]:8d}")
        if args.width <= 600:
            wide = pages[target.name].evaluate("() => document.documentElement.scrollWidth")
            fits = "fits" if wide <= args.width else "SCROLLS SIDEWAYS"
            print(f"    page width {wide} px at a {args.width} px viewport: {fits}")
    for page in pages.values():
        page.context.close()
    if errors:
        print(f"console errors on the pages: {errors}")
    return loads, apis


def summarize(
    targets: list[Target], loads: dict[str, list[Load]], apis: dict[str, list[Api]]
) -> None:
    medians: dict[str, tuple[Load, Api]] = {}
    print("median over the repetitions:")
    for target in targets:
        ls, xs = loads[target.name], apis[target.name]
        load = Load(
            full_ms=median([x.full_ms for x in ls]),
            in_page_ms=median([x.in_page_ms for x in ls]),
            dcl_ms=median([x.dcl_ms for x in ls]),
            render_ms=median([x.render_ms for x in ls]),
            fetch_ms=median([x.fetch_ms for x in ls]),
            cpu_ms=median([x.cpu_ms for x in ls]),
        )
        api = Api(
            compare_ms=median([x.compare_ms for x in xs]),
            experiment_ms=median([x.experiment_ms for x in xs]),
            sweeps_ms=median([x.sweeps_ms for x in xs]),
            compare_kb=median([x.compare_kb for x in xs]),
        )
        medians[target.name] = (load, api)
        print(f"  {target.name:<10} {load_line(load)}")
        print(f"  {'':<10} {api_line(api)}  (full load range {min(x.full_ms for x in ls):.0f}"
              f"..{max(x.full_ms for x in ls):.0f} ms)")  # fmt: skip
    (big, big_api), (small, small_api) = medians[targets[0].name], medians[targets[1].name]
    print(
        f"{targets[0].name} over {targets[1].name}: full +{big.full_ms - small.full_ms:.0f} ms "
        f"(x{big.full_ms / small.full_ms:.2f}), render +{big.render_ms - small.render_ms:.0f} ms, "
        f"compare fetch +{big.fetch_ms - small.fetch_ms:.0f} ms, "
        f"API alone +{big_api.total_ms - small_api.total_ms:.0f} ms, "
        f"service cpu +{big.cpu_ms - small.cpu_ms:.0f} ms"
    )
    verdict = "under" if big.full_ms < TARGET_S * 1000 else "NOT under"
    print(
        f"target (issue 12): the {targets[0].name} page in under {TARGET_S:g} s: median full "
        f"load {big.full_ms / 1000:.3f} s, {verdict} {TARGET_S:g} s"
    )


if __name__ == "__main__":
    main()

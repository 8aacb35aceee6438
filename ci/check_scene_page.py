"""Open a ``scene.html`` written by ``flare-nb`` in headless Chromium, offline, and check it draws.

    python ci/check_scene_page.py [PAGE] [--screenshot OUT.png]

Without PAGE, a demo run on the bundled room scene (tiny model, 2 views at 64x64) is written into
a temporary folder first. Checks, each printed: the page loads with the network disabled
(``--proxy-server`` to a closed port, so any fetch fails and shows as an error); no JavaScript
error or failed request reaches the console; plotly built its 3D scene (a WebGL canvas in the
DOM); the screenshot is not blank (many distinct colours, not one flat background).
Exit status 0 when all pass, 1 otherwise. Needs Debian's ``chromium`` (ci/setup.sh installs it).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
#: written into a COPY of the page (never the user's file): console errors become DOM text
PROBE = """<script>
window.__errs = [];
window.addEventListener('error', function (e) { window.__errs.push('error: ' + (e.message || e.type) + ' ' +
  ((e.target && (e.target.src || e.target.href)) || '')); }, true);
window.addEventListener('unhandledrejection', function (e) { window.__errs.push('rejection: ' + e.reason); });
var __ce = console.error; console.error = function () { window.__errs.push('console.error: ' +
  Array.prototype.join.call(arguments, ' ')); __ce.apply(console, arguments); };
window.addEventListener('load', function () { setTimeout(function () {
  var p = document.createElement('pre'); p.id = '__probe';
  p.textContent = 'CANVAS=' + document.querySelectorAll('.gl-container canvas, canvas').length +
    ' TRACES=' + ((document.querySelector('.js-plotly-plot') || {}).data || []).length +
    ' ERRORS=' + JSON.stringify(window.__errs);
  document.body.appendChild(p); }, 1500); });
</script>"""


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(browser: str, args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu-sandbox", "--use-angle=swiftshader",
            "--enable-unsafe-swiftshader", "--proxy-server=127.0.0.1:9", "--no-first-run",
            "--disable-background-networking", "--disable-extensions", "--hide-scrollbars",
            "--virtual-time-budget=8000", "--enable-logging=stderr", "--v=0"]
    with tempfile.TemporaryDirectory() as prof:
        return subprocess.run(base + [f"--user-data-dir={prof}"] + args, capture_output=True, text=True,
                              timeout=timeout)


def check_page(page: Path, screenshot: Path | None = None) -> list[str]:
    """Problems found with ``page`` (empty list = all checks pass); prints each check."""
    browser = chromium()
    if browser is None:
        return ["no chromium found: install Debian's chromium (apt-get install chromium, see ci/setup.sh)"]
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.html"
        html = page.read_text(encoding="utf-8")
        probe.write_text(html.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
        dom = _run(browser, ["--dump-dom", probe.as_uri()])
        m = re.search(r"CANVAS=(\d+) TRACES=(\d+) ERRORS=(\[.*?\])</pre>", dom.stdout, re.S)
        if m is None:
            problems.append(f"the page did not finish loading (no probe in the DOM; chromium exit {dom.returncode}: "
                            f"{dom.stderr.strip()[-300:]})")
        else:
            canvas, traces, errs = int(m.group(1)), int(m.group(2)), m.group(3)
            print(f"  DOM: {canvas} canvas element(s), {traces} plotly trace(s), page errors {errs}")
            if errs != "[]":
                problems.append(f"JavaScript errors: {errs}")
            if canvas == 0 or traces == 0:
                problems.append("plotly drew no 3D scene (no canvas or no traces)")
        console = [l for l in dom.stderr.splitlines() if "CONSOLE" in l and ("rror" in l or "Uncaught" in l)]
        if console:
            problems.append(f"console errors: {console[:3]}")
        shot = Path(tmp) / "shot.png"
        r = _run(browser, [f"--screenshot={shot}", "--window-size=1000,750", page.resolve().as_uri()])
        if not shot.is_file():
            problems.append(f"no screenshot (chromium exit {r.returncode}: {r.stderr.strip()[-300:]})")
        else:
            a = np.asarray(Image.open(shot).convert("RGB"))
            n_colours = len(np.unique(a.reshape(-1, 3), axis=0))
            non_bg = float((np.abs(a.astype(int) - a[0, 0].astype(int)).sum(-1) > 30).mean())
            print(f"  screenshot {a.shape[1]}x{a.shape[0]}: {n_colours} distinct colours, "
                  f"{non_bg:.1%} of pixels differ from the background")
            if n_colours < 50 or non_bg < 0.02:
                problems.append(f"the screenshot is blank ({n_colours} colours, {non_bg:.1%} non-background)")
            if screenshot is not None:
                shutil.copy(shot, screenshot)
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", nargs="?", help="a scene.html (default: write one with a small demo run)")
    ap.add_argument("--screenshot", help="keep the screenshot here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(args.page) if args.page else None
        if page is None:
            out = Path(tmp) / "demo"
            env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            r = subprocess.run([sys.executable, "-m", "flare_nb.cli", "demo", "--real", "--views", "2", "--size", "64x64",
                                "--pnp-iterations", "50", "--no-render", "--out", str(out)],
                               capture_output=True, text=True, env=env, cwd=REPO)
            if r.returncode != 0:
                print(f"check_scene_page: the demo run failed: {r.stderr.strip()[-500:]}", file=sys.stderr)
                return 1
            page = out / "scene.html"
        if not page.is_file():
            print(f"check_scene_page: no such page: {page}", file=sys.stderr)
            return 1
        print(f"check_scene_page: {page}")
        problems = check_page(page, Path(args.screenshot) if args.screenshot else None)
    for p in problems:
        print(f"  FAIL: {p}", file=sys.stderr)
    print("check_scene_page: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())

"""Open every page of the book (ci/build_book.py) in headless Chromium, take a screenshot of each,
and fail on a broken image, an error output, a page showing fewer figures than its notebook holds,
a plotly figure not drawn, a widget panel without its figures, MathJax missing, LaTeX MathJax
could not render, or a link of the index page that leads to no page of the book.

    python ci/check_book.py --book artifacts/book [--shots artifacts/book_shots]

The pages are served from 127.0.0.1 (MathJax's web fonts do not load from file:// pages); a small
script added to each response as it is served (the files are not changed) reports what the page
shows once MathJax has finished.
"""
from __future__ import annotations

import argparse
import html
import html.parser
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
from functools import partial
from pathlib import Path

ERRORS = """<script>
window.__bookErrors = [];
window.addEventListener('error', function (e) { window.__bookErrors.push(String(e.message).slice(0, 160)); });
</script>"""
PROBE = """<script>
(function () {
  function report() {
    var imgs = Array.prototype.slice.call(document.images);
    var stderr = Array.prototype.slice.call(document.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"]'));
    var r = {
      mathjax: !!(window.MathJax && window.MathJax.isReady),
      math: document.querySelectorAll('.MathJax_CHTML, .MathJax_Display, .MathJax').length,
      math_errors: Array.prototype.map.call(document.querySelectorAll('.MathJax_Error, .merror, .noError, [data-mjx-error]'),
                                            function (e) { return (e.getAttribute('title') || e.textContent).slice(0, 120); }),
      images: imgs.length,
      figures: imgs.filter(function (i) { return /^data:image\\/png/.test(i.getAttribute('src') || '') && !i.closest('.book-widget'); }).length,
      plotly: document.querySelectorAll('.book-plotly').length,
      plotly_drawn: Array.prototype.filter.call(document.querySelectorAll('.book-plotly'), function (el) {
        var svg = el.querySelector('svg.main-svg'), r = el.getBoundingClientRect();
        if (!el.classList.contains('js-plotly-plot') || !svg || r.width < 10 || r.height < 10) { return false; }
        if (/WebGL is not supported|did not load/i.test(el.textContent)) { return false; }
        var gl = el.querySelector('.gl-container');     // 3D scenes draw into a WebGL canvas
        return !gl || Array.prototype.some.call(gl.querySelectorAll('canvas'), function (c) { return c.width > 0 && c.height > 0; });
      }).length,
      widgets: document.querySelectorAll('.book-widget').length,
      widget_figures: imgs.filter(function (i) { return i.closest('.book-widget') && i.complete && i.naturalWidth > 0; }).length,
      js_errors: (window.__bookErrors || []).slice(0, 5),
      broken: imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; })
                  .map(function (i) { return (i.getAttribute('src') || '').slice(0, 60); }),
      errors: stderr.concat(Array.prototype.slice.call(document.querySelectorAll('.book-widget-stderr'))).filter(function (e) { return /Traceback \\(most recent call last\\)|^\\s*\\w+(Error|Exception)\\b/m.test(e.textContent); })
                    .map(function (e) { return e.textContent.trim().split('\\n').pop().slice(0, 160); })
    };
    document.body.setAttribute('data-book-check', JSON.stringify(r));
  }
  window.addEventListener('load', function () {
    if (window.MathJax && window.MathJax.Hub) { window.MathJax.Hub.Queue(report); } else { report(); }
  });
})();
</script>"""
RESULT = re.compile(r'data-book-check="([^"]*)"')


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def send_head(self):
        path = Path(self.translate_path(self.path))
        if path.suffix != ".html" or not path.is_file():
            return super().send_head()
        body = path.read_text(encoding="utf-8")
        i = body.rfind("</body>")
        body = body[:i] + PROBE + body[i:] if i >= 0 else body + PROBE
        j = body.find("<head>")                      # before the page's own scripts: their errors are seen
        body = (body[:j + 6] + ERRORS + body[j + 6:] if j >= 0 else ERRORS + body).encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        import io
        return io.BytesIO(body)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise FileNotFoundError("no chromium found; install it (apt-get install -y chromium, as ci/setup.sh does)")


def browse(browser: str, url: str, shot: Path, budget_ms: int, timeout_s: int) -> dict:
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
             "--no-first-run", f"--virtual-time-budget={budget_ms}"]
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=timeout_s).stdout
    subprocess.run(flags + ["--window-size=1280,1600", f"--screenshot={shot}", url], capture_output=True,
                   timeout=timeout_s)
    m = RESULT.search(dom)
    return json.loads(html.unescape(m.group(1))) if m else {}


def check_page(name: str, got: dict, page: dict | None) -> list[str]:
    """What is wrong with one page as the browser showed it (``got``, the probe's report), given
    what its notebook holds (``page``, its pages.json entry; None for the index)."""
    if not got:
        return [f"{name}: the page did not finish loading (no report from the page)"]
    msgs = []
    if not got["mathjax"]:
        msgs.append(f"{name}: MathJax did not load")
    msgs += [f"{name}: LaTeX MathJax could not render: {e!r}" for e in got["math_errors"]]
    msgs += [f"{name}: broken image {b!r}" for b in got["broken"]]
    msgs += [f"{name}: error output: {e}" for e in got["errors"]]
    msgs += [f"{name}: script error: {e}" for e in got.get("js_errors", [])]
    if page is None:
        return msgs
    if got["figures"] < page["png"]:
        msgs.append(f"{name}: the page shows {got['figures']} figures, its notebook holds {page['png']}")
    n_plotly = page.get("plotly", 0)
    if got.get("plotly", 0) != n_plotly or got.get("plotly_drawn", 0) != n_plotly:
        msgs.append(f"{name}: {got.get('plotly_drawn', 0)} of the notebook's {n_plotly} plotly figures are drawn "
                    f"({got.get('plotly', 0)} plotly areas on the page)")
    if got.get("widgets", 0) != page.get("widgets", 0):
        msgs.append(f"{name}: the page shows {got.get('widgets', 0)} widget panels, its notebook holds "
                    f"{page.get('widgets', 0)}")
    if got.get("widget_figures", 0) != page.get("widget_png", 0):
        msgs.append(f"{name}: the widget panels show {got.get('widget_figures', 0)} figures, their saved state "
                    f"holds {page.get('widget_png', 0)}")
    return msgs


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href" and v]


def index_link_problems(index_html: str, pages: set[str]) -> list[str]:
    """One line per link of the index page that is not a page of the book (``pages``: the page
    file names in pages.json); links off the book (http:, mailto:) and in-page anchors count as
    wrong too, since the index exists to lead to the pages."""
    parser = _Links()
    parser.feed(index_html)
    msgs = [] if parser.hrefs else ["index.html: no links to the pages"]
    for href in parser.hrefs:
        target = urllib.parse.unquote(href.split("#", 1)[0])
        if target not in pages:
            msgs.append(f"index.html: the link {href!r} leads to no page of the book")
    linked = {urllib.parse.unquote(h.split("#", 1)[0]) for h in parser.hrefs}
    msgs += [f"index.html: no link to the page {p}" for p in sorted(pages - linked)]
    return msgs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--book", default="artifacts/book", help="the folder ci/build_book.py wrote")
    ap.add_argument("--shots", default=None, help="where the screenshots go (default: BOOK/../book_shots)")
    ap.add_argument("--budget-ms", type=int, default=60000, help="virtual time each page gets to finish")
    ap.add_argument("--timeout-s", type=int, default=300, help="wall-clock limit per browser call")
    args = ap.parse_args()
    book = Path(args.book).resolve()
    if not (book / "pages.json").is_file() or not (book / "index.html").is_file():
        print(f"--book {book} has no pages.json / index.html; build it with python ci/build_book.py", file=sys.stderr)
        return 2
    shots = Path(args.shots) if args.shots else book.parent / "book_shots"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        browser = chromium()
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 2
    pages = {p["page"]: p for p in json.loads((book / "pages.json").read_text())}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(book)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    problems = []
    try:
        for name in ["index.html"] + sorted(pages):
            try:
                got = browse(browser, f"{base}/{name}", shots / f"{Path(name).stem}.png", args.budget_ms, args.timeout_s)
            except subprocess.TimeoutExpired:
                got = {}
            page = pages.get(name)
            msgs = check_page(name, got, page)
            if name == "index.html":
                msgs += index_link_problems((book / "index.html").read_text(encoding="utf-8"), set(pages))
            problems += msgs
            exp = (lambda k: "" if page is None else f"/{page.get(k, 0)}")
            print(f"{'FAIL' if msgs else 'ok  '}  {name:45s} figures={got.get('figures', '?')}{exp('png')} "
                  f"plotly={got.get('plotly_drawn', '?')}{exp('plotly')} "
                  f"widget figures={got.get('widget_figures', '?')}{exp('widget_png')} math={got.get('math', '?')}",
                  flush=True)
    finally:
        server.shutdown()
    for m in problems:
        print("FAIL", m, file=sys.stderr)
    print(f"{len(pages) + 1} pages checked, {len(problems)} problems; screenshots in {shots}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

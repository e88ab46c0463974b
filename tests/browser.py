"""Open an HTML file in real headless Chromium and report what a user would see.

A copy of the page gets a small probe script: it records JavaScript errors, failed resource loads
and `console.error` calls from the first moment, and after `load` writes the decoded size of every
`<img>` into the DOM, which Chromium's `--dump-dom` prints. A second run takes a screenshot.
No Python browser driver is needed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars"]

PROBE_HEAD = """<script>
window.__probe = {errors: [], console: []};
window.addEventListener('error', function (e) {
  var t = e.target || {};
  window.__probe.errors.push(t.tagName ? ('failed to load ' + t.tagName + ' ' + String(t.src || t.href).slice(0, 60))
                                      : String(e.message));
}, true);
(function () { var orig = console.error; console.error = function () {
  window.__probe.console.push(Array.prototype.join.call(arguments, ' ')); return orig.apply(console, arguments); }; })();
</script>"""

PROBE_TAIL = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.map.call(document.images, function (i) {
    return {w: i.naturalWidth, h: i.naturalHeight, complete: i.complete, alt: i.alt || ''}; });
  var ids = Array.prototype.map.call(document.querySelectorAll('section[id]'), function (s) { return s.id; });
  var out = document.createElement('pre');
  out.id = '__probe_result';
  out.textContent = JSON.stringify({images: imgs, sections: ids, errors: window.__probe.errors,
                                    console: window.__probe.console, title: document.title});
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str | None:
    """Path of a Chromium binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(binary: str, args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout)


def inspect_page(html_path: str | os.PathLike, binary: str) -> dict:
    """Load the page with the probe; returns {images, sections, errors, console, title, log}."""
    html = Path(html_path).read_text(encoding="utf-8")
    probed = re.sub(r"<head>", "<head>" + PROBE_HEAD, html, count=1)
    probed = re.sub(r"</body>", PROBE_TAIL + "</body>", probed, count=1)
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "page.html"
        page.write_text(probed, encoding="utf-8")
        proc = _run(binary, ["--virtual-time-budget=10000", "--run-all-compositor-stages-before-draw",
                             "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()])
    match = re.search(r'<pre id="__probe_result">(.*?)</pre>', proc.stdout, re.S)
    if not match:
        raise AssertionError(f"the probe did not report (page did not load?): {proc.stderr[-2000:]}")
    text = match.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    result = json.loads(text)
    # Chromium also logs console messages itself ("CONSOLE(...)" lines) — keep those that are errors.
    result["log"] = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line and "ERROR" in line]
    return result


def screenshot(html_path: str | os.PathLike, png_path: str | os.PathLike, binary: str,
               size: tuple[int, int] = (1280, 2400)) -> Path:
    _run(binary, [f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=10000",
                  f"--screenshot={png_path}", Path(html_path).resolve().as_uri()])
    return Path(png_path)

"""Opens a kcv report in a real browser (Debian's chromium, headless) from disk and checks it.

    python bench/report_browser.py runs/digits-.../report.html [--screenshot shot.png] [--width 1200 --height 2400]

Checks: every <img> has loaded (complete, naturalWidth > 0), and the console logged no error.
The page itself holds no script; a copy of it with a small checking script appended is opened
(with --dump-dom), the check's result read back from the dumped DOM; the screenshot is of the
page itself. The network is never needed: the page opens from a file:// URL.
Prints one JSON line; exit status 0 when the page passes, 1 when it does not.
Install the browser with `apt-get install -y chromium`.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHECK_SCRIPT = """
<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (image) { return !(image.complete && image.naturalWidth > 0); });
  document.body.setAttribute("data-kcv-check", JSON.stringify({
    images: images.length, broken: broken.map(function (image) { return image.alt; }),
    widths: images.map(function (image) { return image.naturalWidth; })
  }));
});
</script>
"""
HEADLESS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Console messages, as chromium logs them with --enable-logging=stderr (its own start-up warnings, about D-Bus
# and the GPU, are other lines).
CONSOLE_LINE = re.compile(r"CONSOLE[:(]\d+\)?\] \"(.*?)\", source: (.*)")


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def run_chromium(browser: str, arguments: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="kcv-chromium-") as profile:
        return subprocess.run(
            [browser, *HEADLESS, f"--user-data-dir={profile}", *arguments],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def check_page(page: Path, screenshot: Path | None = None, width: int = 1200, height: int = 2400) -> dict:
    browser = find_chromium()
    if browser is None:
        raise SystemExit("chromium is not installed: apt-get install -y chromium")
    page = page.resolve()
    with tempfile.TemporaryDirectory(prefix="kcv-page-") as folder:
        checked = Path(folder) / page.name
        text = page.read_text(encoding="utf-8")
        checked.write_text(text.replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
        result = run_chromium(
            browser, ["--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom", checked.as_uri()]
        )
    match = re.search(r'data-kcv-check="([^"]*)"', result.stdout)
    check = (
        json.loads(html.unescape(match.group(1)))
        if match
        else {"images": 0, "broken": ["the check did not run"], "widths": []}
    )
    console = [f"{message} ({source})" for message, source in CONSOLE_LINE.findall(result.stderr)]
    report = {
        "page": str(page),
        "images": check["images"],
        "broken": check["broken"],
        "smallest_width": min(check["widths"], default=0),
        "console_messages": console,
        "expected_images": text.count("<img "),
    }
    report["ok"] = (
        bool(match) and not check["broken"] and not console and check["images"] == report["expected_images"] > 0
    )
    if screenshot is not None:
        shot = run_chromium(
            browser,
            [
                f"--window-size={width},{height}",
                "--hide-scrollbars",
                "--virtual-time-budget=10000",
                f"--screenshot={screenshot.resolve()}",
                page.as_uri(),
            ],
        )
        report["screenshot"] = str(screenshot) if screenshot.is_file() else f"failed: {shot.stderr.strip()[-200:]}"
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("page", type=Path)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=2400)
    arguments = parser.parse_args()
    report = check_page(arguments.page, arguments.screenshot, arguments.width, arguments.height)
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

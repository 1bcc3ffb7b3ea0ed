"""The HTML statistics report in a real browser: Debian's headless Chromium renders the file written by
`fednode stats --html`, its DOM shows the expected figures, and a screenshot is kept as a test
artifact (test-artifacts/stats_report.png, gitignored).

Without `chromium` on the PATH the test is skipped with the reason, unless FEDNODE_REQUIRE_BROWSER=1
(CI), where a missing browser is a failure. The page must need no network: chromium runs with
background networking off, and the page holds no http(s) reference other than the SVG namespace.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from node.interfaces.cli.main import main
from tests.test_stats import load

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def _chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        if os.environ.get("FEDNODE_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed but FEDNODE_REQUIRE_BROWSER=1: apt-get install -y chromium")
        pytest.skip("headless Chromium not found (Debian package `chromium`); apt-get install -y chromium")
    return exe


def _run(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_html_report_renders_in_headless_chromium(tree: Any, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    exe = _chromium()
    home = tree.county
    load(home.store())
    page = tmp_path / "report.html"
    assert main(["stats", str(home.dir), "--by", "item_type", "--html", str(page)]) == 0
    capsys.readouterr()
    source = page.read_text(encoding="utf-8")
    assert not re.search(r"(?:src|href)\s*=|https?://(?!www\.w3\.org/2000/svg)", source), "the page must be self-contained"

    dom = _run(exe, tmp_path / "profile-dom", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    # the figures of the hand fixture (tests/test_stats.py): 办结率 5/6, 按时 3/5, 满意度 2/3, 亮牌 200/6
    total = re.search(r'<tr class="total"[^>]*>(.*?)</tr>', html, re.S)
    assert total is not None, html[:2000]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", total.group(1))
    assert cells[:5] == ["合计", "6", "5", "83.3%", "60.0%"], cells
    assert "66.7%" in cells and "33.33" in cells and "33.3%" in cells, cells  # 满意度, cards/100, 督办
    assert 'data-key="01"' in html and 'data-key="02"' in html
    assert html.count("<svg") == 6 and "<rect" in html

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "stats_report.png"
    shot.unlink(missing_ok=True)
    res = _run(exe, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""The documentation builds without warnings and its API reference matches the code."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_api_reference_is_up_to_date():
    check = [sys.executable, str(ROOT / "scripts" / "gen_api_docs.py"), "--check"]
    result = subprocess.run(check, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_mkdocs_builds_strictly(tmp_path):
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path)]
    result = subprocess.run(build, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "index.html").is_file()
    # Scripts and stylesheets are bundled, so the site builds and reads offline, and code is
    # highlighted by Pygments at build time.
    for page in tmp_path.rglob("*.html"):
        remote = re.findall(r'<(?:script|link)[^>]+(?:src|href)="https?://[^"]+"', page.read_text())
        assert not remote, (page, remote)
    assert '<span class="kn">import</span>' in (tmp_path / "index.html").read_text()

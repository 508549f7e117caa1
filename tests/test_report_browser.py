"""Open the built report in a real headless Chromium: it loads, every image resolves, every relative link points to
a file, and numbers from the golden data appear on the page. Skipped, with the reason, when Chromium is absent."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from reports.site import build_site
from suite.stats import format_seconds as fmt_time
from tests.golden_report import as_run

pytestmark = pytest.mark.browser
GOLDEN = Path(__file__).parent / "data" / "golden"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.body: dict[str, str | None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "body":
            self.body = values
        for name in ("href", "src"):
            if values.get(name):
                self.refs.append(values[name])


def _chromium(tmp_path: Path, *args: str) -> str:
    if CHROMIUM is None:
        pytest.skip("chromium not installed: apt-get install -y chromium (Debian) to run the browser test")
    done = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


VIEWPORT = 1400


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    files = as_run(tmp_path_factory.mktemp("results"))  # the golden files, recording the catalog their runs used
    return build_site(files, tmp_path_factory.mktemp("report") / "site")


def test_page_loads_images_links_numbers(site: Path, tmp_path: Path) -> None:
    dom = _chromium(tmp_path, f"--window-size={VIEWPORT},1000", "--virtual-time-budget=5000", "--dump-dom",
                    site.as_uri())
    parser = _Links()
    parser.feed(dom)
    assert parser.body.get("data-broken-images") == "0", "the page's load check found broken images"
    assert int(parser.body.get("data-images") or 0) >= 7
    for ref in parser.refs:
        if ref.startswith("#"):
            continue
        assert "://" not in ref and not ref.startswith("/"), f"not a relative link: {ref}"
        assert (site.parent / ref).is_file(), f"link does not resolve: {ref}"
    records = [json.loads(line) for line in (GOLDEN / "seed_3fw.jsonl").read_text().splitlines()]
    shown = min(r["stats"]["median"] for r in records if r.get("case") == "seed-conv-3x3" and r["backend"] == "jax"
                and r["pass"] == "forward" and r["status"] == "ok")  # one run per layout: the faster one is shown
    assert fmt_time(shown) in dom  # a median from the golden data, as the seed table prints it
    assert "Which framework is fastest" in dom and "HAND-MADE" in dom


def test_page_fits_its_viewport_and_each_seed_question_has_its_figure(site: Path, tmp_path: Path) -> None:
    dom = _chromium(tmp_path, f"--window-size={VIEWPORT},1000", "--virtual-time-budget=5000", "--dump-dom",
                    site.as_uri())
    parser = _Links()
    parser.feed(dom)
    width = int(parser.body.get("data-scroll-width") or 0)
    assert 0 < width <= VIEWPORT, f"the page is {width} px wide in a {VIEWPORT} px window"
    for question, figure in (("backward", "training_shares"), ("scaling", "scaling"), ("conv", "conv_vs_gemm")):
        section = dom.split(f'id="q-{question}"', 1)[1].split('class="question"', 1)[0]
        assert f'src="figures/{figure}.png"' in section, question


def test_screenshot(site: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    _chromium(tmp_path, f"--window-size={VIEWPORT},3000", "--virtual-time-budget=5000", f"--screenshot={shot}",
              site.as_uri())
    assert shot.is_file() and shot.stat().st_size > 50_000  # a rendered page, not a blank one


def test_the_training_step_section_loads_its_figure_and_fits_the_viewport(tmp_path: Path) -> None:
    from tests.test_report_model import NET, results
    from tests.test_report_steps import ORDER, three

    site = build_site(results(*three(), cases=NET), tmp_path / "site", order=ORDER)
    dom = _chromium(tmp_path, f"--window-size={VIEWPORT},1000", "--virtual-time-budget=5000", "--dump-dom",
                    site.as_uri())
    parser = _Links()
    parser.feed(dom)
    assert parser.body.get("data-broken-images") == "0"
    assert 0 < int(parser.body.get("data-scroll-width") or 0) <= VIEWPORT
    section = dom.split('id="q-steps"', 1)[1].split('class="question"', 1)[0]
    assert 'src="figures/steps.png"' in section and "layer sum / step" in section

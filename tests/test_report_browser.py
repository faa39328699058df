"""The report pages as a reader's browser shows them: index.html of a small
``tokendyn reproduce`` run and report.html of ``tokendyn analyze``, opened in headless
Chromium (DevTools protocol): no console errors, no request leaves the page, every
figure decoded with a non-zero size, every section present, no sideways scrolling
on a phone-sized screen. Skipped where no Chromium is installed (scripts/setup.sh
installs Debian's package)."""

import json

import pytest
import torch
from _chromium import Chromium, find_chromium

from tokendyn.cli import main
from tokendyn.model import MambaConfig, MambaLM

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (scripts/setup.sh installs "
                                "Debian's chromium; or set TOKENDYN_CHROMIUM to a Chromium or Chrome binary)")


def run_cli(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code in (0, None)


@pytest.fixture(scope="module")
def browser():
    with Chromium(CHROMIUM) as b:
        yield b


def assert_page_sound(seen: dict, sections: list[str], min_images: int) -> None:
    assert seen["errors"] == [], seen["errors"]
    # self-contained: only the page itself and its data: URIs are loaded
    assert all(u.startswith("data:") for u in seen["requests"][1:]), seen["requests"]
    assert seen["scripts"] == 0 and seen["stylesheets"] == 0
    assert seen["sections"] == sections
    assert len(seen["images"]) >= min_images
    for img in seen["images"]:
        assert img["src"].startswith("data:image/"), img
        assert img["complete"] and img["naturalWidth"] > 0 and img["naturalHeight"] > 0, img
        assert img["width"] > 0 and img["height"] > 0, img


def test_reproduce_page_in_chromium(tmp_path, browser):
    out = tmp_path / "run"
    run_cli(["reproduce", "--only", "analysis", "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    seen = browser.open(out / "index.html", screenshot=tmp_path / "top.png")
    assert_page_sound(seen, ["checks", "sec-analysis", "committed", "not-run"], min_images=4)
    assert (tmp_path / "top.png").stat().st_size > 0
    assert seen["title"] == "tokendyn reproduce (quick)"
    # every check's verdict is on the page as the reader sees it
    for c in report["checks"]:
        assert c["claim"] in seen["text"]
    assert "section core" in seen["text"] and "section theory" in seen["text"]   # listed as not run
    phone = browser.open(out / "index.html", width=390, height=800)
    assert phone["errors"] == []
    assert phone["scrollWidth"] <= phone["innerWidth"], "the page scrolls sideways on a phone"
    printed = browser.open(out / "index.html", media="print")
    assert seen["tocShown"] and not printed["tocShown"]          # the print style is in force
    assert printed["sections"] == seen["sections"] and all(i["naturalWidth"] > 0 for i in printed["images"])


def test_analyze_page_in_chromium(tmp_path, browser):
    ckpt = tmp_path / "ckpt"
    torch.manual_seed(0)
    MambaLM(MambaConfig(d_model=16, n_layer=3, vocab_size=60, d_state=4)).save(ckpt)
    run_cli(["analyze", str(ckpt), "--out", str(tmp_path / "a"), "--max-tokens", "64"])
    seen = browser.open(tmp_path / "a" / "report.html")
    assert_page_sound(seen, ["summary", "layers", "spectra", "radial_velocity", "flow", "token_norms", "growth",
                                "hidden_attention"],
                      min_images=4)
    phone = browser.open(tmp_path / "a" / "report.html", width=390, height=800)
    assert phone["errors"] == [] and phone["scrollWidth"] <= phone["innerWidth"]

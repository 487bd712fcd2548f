"""The written report as Markdown, HTML (figures embedded, views linked) and PDF (headless
Chromium), checked by rendering the PDF's pages to PNG (pdftoppm) and looking at the pixels."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from mlx_interp import load_model
from mlx_interp.analysis import logit_lens
from mlx_interp.analysis.plots import logit_lens_plot, residual_norm_heatmap
from mlx_interp.analysis.views import attention_view, logit_lens_view
from mlx_interp.report import build_report
from mlx_interp.system import find_chromium

pytest.importorskip("markdown")  # a dependency; missing only in a venv set up before it was


@pytest.fixture(scope="module")
def run(checkpoint_dir, tmp_path_factory):
    """A run folder with a few artefacts of the basics and analysis stages (a tiny GPT-2)."""
    model = load_model(checkpoint_dir("gpt2"))
    run = tmp_path_factory.mktemp("run")
    (run / "pipeline.json").write_text(json.dumps({"model": "tiny-gpt2", "seed": 0}))
    (run / "basics").mkdir()
    preds = [{"prompt": "a b c", "top": [{"token": " d", "p": 0.5}, {"token": " <b>e", "p": 0.25}]}]
    (run / "basics" / "predictions.json").write_text(json.dumps(preds))
    text = "the quick brown fox jumps"
    residual_norm_heatmap(model, text, run / "basics" / "residual_norms.png")
    a = run / "analysis"
    ll = logit_lens(model, text)
    logit_lens_plot(ll, a / "p0_logit_lens.png")
    attention_view(model, text).save(a / "views" / "p0_attention.html")
    logit_lens_view(ll).save(a / "views" / "p0_logit_lens.html")
    (a / "index.md").write_text("# Activation analysis\n\nmodel\n\n# Prompt 0\n\n## Logit lens\n\n"
                                "![Logit lens](p0_logit_lens.png)\n\nNumbers: `p0_logit_lens.csv`\n\n"
                                "Open: [attention](views/p0_attention.html).\n")  # fmt: skip
    build_report(run)
    return run


def test_report_html_embeds_figures_and_links_views(run):
    md = (run / "report.md").read_text()
    page = (run / "report.html").read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(figures) >= 2 and all((run / f).exists() for f in figures)
    imgs = re.findall(r'<img alt="[^"]*" src="([^"]{0,40})', page)
    assert len(imgs) == len(figures) and all(s.startswith("data:image/png;base64,") for s in imgs)
    assert page.count("<figure>") == len(figures) and "<figcaption>" in page
    assert "<table" in page and "<th" in page and "&lt;b&gt;e" in page  # tables; text escaped
    links = set(re.findall(r'href="([^"#]+\.html)"', page))
    assert {"analysis/views/p0_attention.html", "analysis/views/p0_logit_lens.html"} <= links
    assert all((run / link).exists() for link in links)
    assert '<nav class="toc">' in page and 'href="#set-up"' in page
    assert not re.search(r"(src|href)=\"https?://", page)  # nothing from the network


def test_report_pdf_pages_are_not_blank(run, tmp_path):
    if not find_chromium():
        pytest.skip("needs Chromium (apt-get install chromium)")
    if not shutil.which("pdftoppm"):
        pytest.skip("needs pdftoppm (apt-get install poppler-utils)")
    import matplotlib.image

    pdf = run / "report.pdf"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    subprocess.run(["pdftoppm", "-r", "40", "-png", str(pdf), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page*.png"))
    assert len(pages) >= 2
    coloured = 0
    for p in pages:
        rgb = matplotlib.image.imread(p)[..., :3]  # floats in [0, 1]
        ink = (rgb.min(-1) < 0.85).mean()  # share of pixels that are not (nearly) white
        assert ink > 0.01, f"{p.name} is blank ({ink:.4f} of its pixels are not white)"
        coloured += int(((rgb.max(-1) - rgb.min(-1)) > 0.3).mean() > 0.01)  # a figure's colours
    assert coloured >= 1


def test_report_cli_names_what_it_wrote(run, capsys):
    from mlx_interp.cli import main

    assert main(["report", "--run", str(run), "--no-pdf"]) == 0
    said = capsys.readouterr().out
    assert "report.md" in said and "report.html" in said and "no PDF: --no-pdf" in said

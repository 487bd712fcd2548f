"""The dashboards and the interactive views in a real headless browser: the index loads,
search filters, a page opens; hovering a token in a view changes what it shows.

Needs Chromium and its driver (Debian: ``apt-get install chromium chromium-driver``) and
selenium (the ``dev`` extra); skipped cleanly when either is missing.
"""

from __future__ import annotations

import random
import shutil
import tempfile

import numpy as np
import pytest

from mlx_interp.cli import main
from mlx_interp.sae import SAE, SAEConfig
from mlx_interp.sae.sae import init_params

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")  # fmt: skip
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs chromium and chromedriver (apt-get install chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,900", f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"]:  # fmt: skip
        opts.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def dashboards(checkpoint_dir, tmp_path_factory):
    folder = checkpoint_dir("llama-mha-tied")
    tmp = tmp_path_factory.mktemp("dash")
    cfg = SAEConfig(d_in=64, d_sae=48, architecture="topk", k=4,
                    hook_name="blocks.1.hook_resid_post", model_name=str(folder))  # fmt: skip
    p = init_params(cfg, seed=0)
    p["b_enc"] = np.random.default_rng(1).normal(0, 0.05, 48).astype(np.float32)
    SAE(cfg, p).save(tmp / "sae")
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog <b>bold</b> & sparse".split()
    (tmp / "t.txt").write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(30)) for _ in range(40)))  # fmt: skip
    rc = main(["features", "--model", str(folder), "--sae", str(tmp / "sae"), "--data", str(tmp / "t.txt"),
               "--out", str(tmp / "out"), "--tokens", "1000", "--max-features", "3", "--neurons", "none"])  # fmt: skip
    assert rc == 0
    return tmp / "out"


def test_index_search_and_page(browser, dashboards):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get((dashboards / "index.html").as_uri())
    rows = browser.find_elements(By.CSS_SELECTOR, "#rows tr")
    assert len(rows) == 48
    assert "48 of 48" in browser.find_element(By.ID, "count").text
    # sorting by max activation puts the largest first
    browser.find_element(By.CSS_SELECTOR, 'th[data-k="max"]').click()
    vals = [float(r.find_elements(By.TAG_NAME, "td")[3].text) for r in browser.find_elements(By.CSS_SELECTOR, "#rows tr")]  # fmt: skip
    assert vals == sorted(vals, reverse=True)
    # the search box filters on top tokens
    box = browser.find_element(By.ID, "q")
    box.send_keys("fox")
    filtered = browser.find_elements(By.CSS_SELECTOR, "#rows tr")
    assert 0 < len(filtered) < 48
    box.clear()
    box.send_keys("no-such-token-anywhere")
    assert browser.find_elements(By.CSS_SELECTOR, "#rows tr") == []
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)  # an input event: the filter is reset
    assert len(browser.find_elements(By.CSS_SELECTOR, "#rows tr")) == 48
    # a feature page opens from its link
    browser.find_element(By.ID, "pages").click()
    link = browser.find_elements(By.CSS_SELECTOR, "#rows a")[0]
    name = link.text
    link.click()
    assert browser.title == f"Feature {name}"
    assert browser.find_elements(By.CSS_SELECTOR, ".ctx")
    img = browser.find_element(By.TAG_NAME, "img")
    assert browser.execute_script("return arguments[0].naturalWidth", img) > 100
    # escaped text shows as text: no <b> element came from the data
    assert browser.find_elements(By.CSS_SELECTOR, ".ctx b") == []


@pytest.fixture(scope="module")
def views(checkpoint_dir, tmp_path_factory):
    from mlx_interp import load_model
    from mlx_interp.analysis.views import attention_view, logit_lens_view, neuron_view

    model = load_model(checkpoint_dir("llama-gqa-untied"))
    tmp = tmp_path_factory.mktemp("views")
    text = "the quick brown fox <b>jumps</b> over"
    return {
        "attention": attention_view(model, text).save(tmp / "attention.html"),
        "neuron": neuron_view(model, [text, "a lazy dog"], "blocks.1.mlp.hook_post", 3).save(tmp / "neuron.html"),
        "lens": logit_lens_view(model, text).save(tmp / "lens.html"),
    }  # fmt: skip


def _hover(browser, el):
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).move_to_element(el).perform()


def test_attention_view_hover(browser, views):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(views["attention"].as_uri())
    spans = browser.find_elements(By.CSS_SELECTOR, "#tokens .tok")
    assert len(spans) > 5 and browser.find_elements(By.CSS_SELECTOR, ".ctx b, #tokens b") == []
    info = browser.find_element(By.ID, "info")
    assert info.text.startswith("Hover a token")
    _hover(browser, spans[5])
    first = info.text
    assert "token 5" in first and "attends to" in first
    shades = [s.value_of_css_property("background-color") for s in spans]
    assert len(set(shades[:6])) > 1  # keys 0..5 are shaded by their weight
    assert all(s == shades[-1] for s in shades[6:])  # later keys: weight 0 (causal)
    data = browser.execute_script("return DATA")
    w = data["patterns"][data["start_layer"]][0][5]
    assert f"{max(w):.3f}" in first  # the hovered token's largest weight is listed
    _hover(browser, spans[2])
    assert "token 2" in info.text and info.text != first
    Select(browser.find_element(By.ID, "head")).select_by_value("1")  # another head
    _hover(browser, spans[5])
    assert "head 1" in info.text and info.text != first
    assert len(browser.find_elements(By.CSS_SELECTOR, "#heads canvas")) == data["n_heads"]


def test_activation_and_lens_views_hover(browser, views):
    from selenium.webdriver.common.by import By

    browser.get(views["neuron"].as_uri())
    spans = browser.find_elements(By.CSS_SELECTOR, ".tok")
    info = browser.find_element(By.ID, "info")
    before = info.text
    _hover(browser, spans[3])
    data = browser.execute_script("return DATA")
    v = data["texts"][0]["values"][3]
    assert info.text != before and "position 3" in info.text
    assert browser.execute_script("return fmt(arguments[0])", v) in info.text
    browser.get(views["lens"].as_uri())
    cells = browser.find_elements(By.CSS_SELECTOR, "#lens td")
    data = browser.execute_script("return DATA")
    assert len(cells) == len(data["labels"]) * len(data["tokens"])
    info = browser.find_element(By.ID, "info")
    _hover(browser, browser.find_element(By.ID, "cell-1-2"))
    assert info.text.startswith(data["labels"][1] + ", position 2")
    shown = browser.execute_script(
        "return JSON.stringify(show(arguments[0]))", data["top_strs"][1][2][0]
    )
    assert shown in info.text

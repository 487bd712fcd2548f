"""Static feature dashboards: an index page, one HTML page and one PNG card per feature.

Plain HTML, CSS and vanilla JavaScript (no server, no network): open ``index.html`` in a
browser. Every token string goes through ``html.escape`` (and the index's JSON is escaped
for a <script> block), so text such as ``</script>`` or ``<b>`` in the data shows as text.
"""

from __future__ import annotations

import html
import json
import warnings
from pathlib import Path

import numpy as np

from ..io import atomic_path, write_text
from .store import FeatureStore, load_feature_store

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{font-size:1.4em} h2{font-size:1.1em;margin-top:1.4em} a{color:#1565c0}
table{border-collapse:collapse;font-size:13px} th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f3f3f3;cursor:pointer;user-select:none;position:sticky;top:0} td.l,th.l{text-align:left}
.ctx{font-family:Menlo,Consolas,monospace;font-size:13px;white-space:pre-wrap;line-height:1.9;
 border-bottom:1px solid #eee;padding:3px 0}
.ctx .t{border-radius:2px;padding:1px 0} .ctx .mx{outline:2px solid #c62828}
.ctx .out{color:#999;border-bottom:1px dotted #999} .act{display:inline-block;width:4.5em;color:#555}
.stats td{text-align:left} .meta{color:#555;font-size:13px} .pos{color:#2e7d32} .neg{color:#c62828}
.tokens td{font-family:Menlo,Consolas,monospace} input{font-size:14px;padding:4px;width:22em}
"""


def show_token(s: str) -> str:
    """A token's text, escaped for HTML, with newlines and tabs made visible."""
    return html.escape(s).replace("\n", "\u21b5\n").replace("\t", "\u2192")


def unit_name(meta: dict, j: int | None = None) -> str:
    """'SAE feature 12' or 'neuron 12' (a store of kind 'neurons'); without j the plural."""
    sae = meta["kind"] == "sae"
    if j is None:
        return "SAE features" if sae else "Neurons"
    return f"SAE feature {j}" if sae else f"neuron {j}"


def _fmt(v, spec=".3g") -> str:
    return "n/a" if v is None else format(v, spec)


# ------------------------------------------------------------------ feature.csv
def write_features_csv(out) -> Path:
    store = load_feature_store(out)
    a = store.arrays
    lines = ["feature,density,fires,mean_act,max_act,entropy_bits,purity,purity_token,explanation,top_tokens"]  # fmt: skip
    for j in range(store.n_units):
        toks = " | ".join(f"{t!r}x{c}" for t, c in store.top_tokens(j))
        vals = [f"{a[k][j]:.6g}" if np.isfinite(a[k][j]) else "" for k in ("density",)]
        vals += [str(int(a["fires"][j]))]
        vals += [f"{a[k][j]:.6g}" if np.isfinite(a[k][j]) else "" for k in ("mean_act", "max_act", "entropy", "purity", "purity_token", "explanation")]  # fmt: skip
        lines.append(f"{j}," + ",".join(vals) + ',"' + toks.replace('"', '""') + '"')
    return write_text(Path(out) / "features.csv", "\n".join(lines) + "\n")


# ------------------------------------------------------------------ the PNG card
def feature_card(store: FeatureStore, j: int, path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = store.feature(j)
    fig = plt.figure(figsize=(11, 6.6))
    gs = fig.add_gridspec(
        2,
        2,
        height_ratios=[1, 1.2],
        hspace=0.35,
        wspace=0.35,
        left=0.06,
        right=0.98,
        top=0.86,
        bottom=0.02,
    )
    title = (
        f"{unit_name(store.meta, j)}  ({store.hook})   density {f['density']:.2e} "
        f"({f['fires']} of {f['n_tokens']} tokens)   max {f['max_act']:.3g}   mean when active "
        f"{f['mean_act']:.3g}\ntop-token entropy {_fmt(f['entropy'], '.2f')} bits   purity "
        f"{_fmt(f['purity'], '.2f')}   explanation score {_fmt(f['explanation'], '.2f')}"
    )
    fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    ax = fig.add_subplot(gs[0, 0])
    edges = np.array(f["hist_edges"])
    counts = np.array(f["hist_counts"])
    nz = np.nonzero(counts)[0]
    if len(nz):
        lo, hi = max(nz[0] - 1, 0), min(nz[-1] + 2, len(counts))
        ax.bar(10 ** edges[lo:hi], counts[lo:hi], width=np.diff(10 ** edges[lo : hi + 1]), align="edge", color="tab:orange")  # fmt: skip
        ax.set_xscale("log")
        from matplotlib.ticker import NullFormatter

        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("activation when firing (log scale)", fontsize=8)
    ax.set_ylabel("tokens", fontsize=8)
    ax.set_title("activation histogram", fontsize=9)
    ax.tick_params(labelsize=7)
    ax = fig.add_subplot(gs[0, 1])
    if f["promoted"]:
        pro, sup = f["promoted"][:8], f["suppressed"][:8][::-1]
        labels = [repr(t)[1:-1][:18] for t, _ in sup + pro[::-1]]
        vals = [v for _, v in sup + pro[::-1]]
        ax.barh(range(len(vals)), vals, color=["tab:red"] * len(sup) + ["tab:green"] * len(pro))
        ax.set_yticks(range(len(vals)), labels, fontsize=7, family="monospace")
        ax.axvline(0, color="k", lw=0.6)
        ax.set_title("logit effects: promoted (green) / suppressed (red)", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, "no logit effects\n(not a residual-stream direction)", ha="center", fontsize=9)  # fmt: skip
    ax = fig.add_subplot(gs[1, :])
    ax.axis("off")
    ax.set_title("top activations: context, [[token at the maximum]]", fontsize=9, loc="left")
    for i, ex in enumerate(f["top"][:10]):
        parts = [repr(t)[1:-1] for t, _ in ex["context"]]
        mi = ex["max_index"]
        if 0 <= mi < len(parts):
            parts[mi] = f"[[{parts[mi]}]]"
        text = "".join(parts)
        if len(text) > 120:
            text = "\u2026" + text[-119:]
        ax.text(0, 0.95 - i * 0.1, f"{ex['act']:7.3g}  {text}", fontsize=8, family="monospace", transform=ax.transAxes)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # glyphs missing from the font
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


# ------------------------------------------------------------------ the HTML pages
def _context_html(ex: dict, max_act: float) -> str:
    spans = []
    for i, (tok, act) in enumerate(ex["context"]):
        cls = "t mx" if i == ex["max_index"] else "t"
        if act is None:
            spans.append(f'<span class="t out" title="left out (position 0, special or massive)">{show_token(tok)}</span>')  # fmt: skip
            continue
        alpha = min(max(act / max_act, 0), 1) if max_act > 0 else 0
        spans.append(
            f'<span class="{cls}" style="background:rgba(255,140,0,{alpha:.2f})" '
            f'title="{html.escape(repr(tok))}: {act:.4g}">{show_token(tok)}</span>'
        )
    return f'<div class="ctx"><span class="act">{ex["act"]:.4g}</span>{"".join(spans)}</div>'


def feature_page(store: FeatureStore, j: int, card_rel: str | None) -> str:
    f = store.feature(j)
    m = store.meta
    rows = [
        ("density", f"{f['density']:.3e} ({f['fires']} of {f['n_tokens']} tokens)"),
        ("mean activation when firing", _fmt(f["mean_act"], ".4g")),
        ("max activation", _fmt(f["max_act"], ".4g")),
        (
            "top-token entropy",
            f"{_fmt(f['entropy'], '.2f')} bits (of at most {np.log2(m['top_k']):.0f})",
        ),  # fmt: skip
        ("top-token purity (monosemanticity score)", _fmt(f["purity"], ".2f")),
        ("explanation score (held-out r)", _fmt(f["explanation"], ".2f")),
        ("firings at left-out positions", str(f["fires_left_out"])),
    ]
    stats = "".join(f"<tr><th class=l>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)  # fmt: skip
    logits = ""
    if f["promoted"]:

        def li(items, cls):
            return "".join(f'<tr><td class="l">{show_token(t)}</td><td class="{cls}">{v:+.3g}</td></tr>' for t, v in items)  # fmt: skip

        logits = (
            "<h2>Logit effects (decoder direction through the final norm and unembedding)</h2>"
            '<table class="tokens"><tr><th class=l>promoted</th><th></th><th class=l>suppressed</th><th></th></tr>'
            + "".join(
                f'<tr><td class="l">{show_token(a)}</td><td class="pos">{va:+.3g}</td>'
                f'<td class="l">{show_token(b)}</td><td class="neg">{vb:+.3g}</td></tr>'
                for (a, va), (b, vb) in zip(f["promoted"], f["suppressed"], strict=True)
            )
            + "</table>"
        )
        del li
    tops = "".join(_context_html(ex, f["max_act"] or 0) for ex in f["top"]) or "<p>never fired</p>"
    card = f'<p><img src="{html.escape(card_rel)}" alt="card of feature {j}" width="880"></p>' if card_rel else ""  # fmt: skip
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Feature {j}</title><style>{CSS}</style></head>
<body><p><a href="../index.html">&larr; all features</a></p>
<h1>{html.escape(unit_name(m, j))}</h1>
<p class="meta">{html.escape(m["model"])} &middot; {html.escape(m["hook"])} &middot; {html.escape(str(m.get("sae", "")))}
&middot; {m["n_tokens"]} tokens of {html.escape(m["data"])}</p>
<table class="stats">{stats}</table>
{logits}
<h2>Top {len(f["top"])} activations</h2>
<p class="meta">Colour: activation relative to the maximum ({_fmt(f["max_act"], ".4g")}); the outlined token is the
maximum; hover a token for its activation; grey dotted tokens were left out of the statistics.</p>
{tops}
<h2>Card</h2>{card}
</body></html>
"""


INDEX_JS = """
const rows = JSON.parse(document.getElementById('data').textContent);
const cols = ['id','density','mean','max','entropy','purity','expl','tokens'];
let key = 'density', dir = -1;
const tbody = document.getElementById('rows'), count = document.getElementById('count');
const q = document.getElementById('q'), pagesOnly = document.getElementById('pages');
function fmt(v, c){ if (v === null) return ''; if (c === 'id') return v;
  if (c === 'density') return v.toExponential(2); return Number(v).toPrecision(3); }
function esc(s){ return s.replace(/&/g,'&amp;').replace(/</g,'&lt;').replace(/>/g,'&gt;').replace(/"/g,'&quot;'); }
function render(){
  const s = q.value.toLowerCase();
  let shown = rows.filter(r => (!pagesOnly.checked || r.page) &&
     (!s || r.tokens.some(t => t.toLowerCase().includes(s))));
  shown.sort((a, b) => { const x = a[key], y = b[key];
    if (x === null) return 1; if (y === null) return -1; return (x < y ? -1 : x > y ? 1 : 0) * dir; });
  count.textContent = shown.length + ' of ' + rows.length + ' features' + (shown.length > 1000 ? ' (first 1000 shown)' : '');
  tbody.innerHTML = shown.slice(0, 1000).map(r => '<tr>' +
    '<td>' + (r.page ? '<a href="' + r.page + '">' + r.id + '</a>' : r.id) + '</td>' +
    ['density','mean','max','entropy','purity','expl'].map(c => '<td>' + fmt(r[c], c) + '</td>').join('') +
    '<td class="l tok">' + r.tokens.slice(0, 3).map(t => esc(JSON.stringify(t))).join(' ') + '</td></tr>').join('');
}
document.querySelectorAll('th[data-k]').forEach(th => th.addEventListener('click', () => {
  const k = th.dataset.k; dir = (key === k) ? -dir : -1; key = k; render(); }));
q.addEventListener('input', render); pagesOnly.addEventListener('change', render); render();
"""


def index_page(store: FeatureStore, pages: dict[int, str], extra_html: str = "") -> str:
    a = store.arrays
    rows = []
    for j in range(store.n_units):

        def num(k, j=j):
            v = float(a[k][j])
            return v if np.isfinite(v) else None

        rows.append({
            "id": j, "density": num("density"), "mean": num("mean_act"), "max": num("max_act"),
            "entropy": num("entropy"), "purity": num("purity"), "expl": num("explanation"),
            "tokens": [t for t, _ in store.top_tokens(j, 10)], "page": pages.get(j),
        })  # fmt: skip
    data = json.dumps(rows).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    m = store.meta
    s = m["summary"]
    head = "".join(
        f'<th data-k="{k}" class="{"l" if k == "tokens" else ""}">{lab}</th>'
        for k, lab in [("id", "feature"), ("density", "density"), ("mean", "mean act"), ("max", "max act"),
                       ("entropy", "entropy (bits)"), ("purity", "monosemanticity (purity)"),
                       ("expl", "explanation score"), ("tokens", "top tokens")]
    )  # fmt: skip
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Features of {html.escape(m["hook"])}</title><style>{CSS}</style></head>
<body><h1>{unit_name(m)}: {html.escape(m["model"])} {html.escape(m["hook"])}</h1>
<p class="meta">{html.escape(str(m.get("sae", "")))} ({html.escape(m["sae_architecture"])}, {"d_sae" if m["kind"] == "sae" else "units"}={m["d_sae"]})
&middot; {m["n_tokens"]} tokens of {html.escape(m["data"])} &middot; dead {s["dead_fraction"]:.3f}, dense {s["dense_fraction"]:.4f}
{'&middot; <a href="comparison.md">comparison with neurons</a>' if m["kind"] == "sae" else ""} &middot; <a href="features.csv">features.csv</a></p>
{extra_html}
<p>Search top tokens: <input id="q" placeholder="e.g. the, (, def" autofocus>
<label><input type="checkbox" id="pages" style="width:auto"> only features with a page</label>
<span id="count" class="meta"></span></p>
<p class="meta">Click a column header to sort. Density: fraction of tokens on which the feature fires;
purity: share of its top {m["top_k"]} activations on the most common token class; explanation score:
held-out correlation of a one-token rule with the activation (README, "Features and dashboards").</p>
<table><thead><tr>{head}</tr></thead><tbody id="rows"></tbody></table>
<script id="data" type="application/json">{data}</script>
<script>{INDEX_JS}</script>
</body></html>
"""


def choose_features(
    store: FeatureStore, max_features: int, features=None, seed: int = 0
) -> list[int]:
    """The explicit features first, then a random sample (``seed``) of the live ones."""
    chosen = [store.check_index(j) for j in (features or [])]
    live = np.nonzero(store.arrays["density"] > 0)[0]
    live = np.setdiff1d(live, chosen)
    n = max(0, max_features - len(chosen))
    rng = np.random.default_rng(seed)
    sample = rng.choice(live, size=min(n, len(live)), replace=False) if n and len(live) else []
    return chosen + sorted(int(j) for j in sample)


def write_dashboards(out, max_features: int = 100, features=None, seed: int = 0) -> list[int]:
    """index.html, pages/ and cards/ in ``out`` (a ``features`` output folder)."""
    out = Path(out)
    store = load_feature_store(out)
    chosen = choose_features(store, max_features, features, seed)
    pages = {}
    for j in chosen:
        card = out / "cards" / f"feature_{j:05d}.png"
        with atomic_path(card) as tmp:
            feature_card(store, j, tmp)
        page = out / "pages" / f"feature_{j:05d}.html"
        write_text(page, feature_page(store, j, f"../cards/{card.name}"))
        pages[j] = f"pages/{page.name}"
    extra = ""
    if (out / "comparison.png").exists():
        extra = '<p><a href="comparison.png"><img src="comparison.png" alt="SAE features vs neurons" width="1000"></a></p>'  # fmt: skip
    write_text(out / "index.html", index_page(store, pages, extra))
    return chosen

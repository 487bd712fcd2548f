"""Interactive views: attention patterns per head, token-level activations, the logit lens.

Each builder returns a :class:`View`: one self-contained HTML page (inline CSS and vanilla
JavaScript, the data as JSON in the page; no server, no network, no CDN). ``view.save(path)``
writes it as a standalone file; in Jupyter the view shows inline (``_repr_html_`` puts the
page in an ``<iframe srcdoc>``, so its script runs apart from the notebook's own page).
Jupyter runs that script for outputs made in a live kernel; a notebook reopened untrusted
shows the frame without its script (File > Trust Notebook, or rerun the cell).

Token text is only ever set through ``textContent`` (never parsed as HTML), and the JSON is
escaped for the ``<script>`` block, so text such as ``</script>`` or ``<b>`` shows as text.

    attention_view(model, text)                 # hook_pattern of every layer and head
    neuron_view(model, texts, hook, index)      # one unit of a hook over texts
    token_values_view(tokens, values, label)    # any per-token numbers (SAE features: see
                                                #   mlx_interp.features.views.feature_view)
    logit_lens_view(model_or_LogitLens, text)   # top predictions of every layer, per position
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..backends import to_numpy
from ..io import write_text
from .measures import LogitLens, logit_lens

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1em 1.2em;color:#222}
h1{font-size:1.25em;margin:0 0 .3em} .meta{color:#555;font-size:13px;margin-bottom:.6em}
.controls{margin:.4em 0 .8em;font-size:14px} .controls label{margin-right:1em}
select{font-size:14px} .legend{color:#666;font-size:12px}
.text{font-family:Menlo,Consolas,monospace;font-size:14px;line-height:2.1;white-space:pre-wrap;
 border:1px solid #e3e3e3;border-radius:4px;padding:.4em .6em;margin:.3em 0}
.tok{border-radius:3px;padding:2px 1px;cursor:default;transition:background .05s}
.tok.sel{outline:2px solid #222} .tok.out{color:#999;border-bottom:1px dotted #999}
#info{font-size:14px;min-height:3.2em;background:#fafafa;border:1px solid #e3e3e3;border-radius:4px;
 padding:.4em .6em;margin:.5em 0;white-space:pre-wrap;font-family:Menlo,Consolas,monospace}
.heads{display:flex;flex-wrap:wrap;gap:8px;margin:.4em 0}
.head{text-align:center;font-size:12px;cursor:pointer;border:2px solid transparent;border-radius:4px;padding:2px}
.head.sel{border-color:#1565c0} canvas{image-rendering:pixelated;display:block}
table.lens{border-collapse:collapse;font-family:Menlo,Consolas,monospace;font-size:12px}
table.lens td,table.lens th{border:1px solid #e0e0e0;padding:2px 5px;white-space:pre;text-align:center;
 max-width:7em;overflow:hidden;text-overflow:ellipsis}
table.lens th{background:#f3f3f3;font-weight:normal} table.lens td.hit{font-weight:bold}
table.lens tr.final td{border-top:2px solid #888} td.cur{outline:2px solid #222}
"""

# Shared helpers: how a token is shown, colours.
COMMON_JS = r"""
const DATA = JSON.parse(document.getElementById('data').textContent);
function show(s){return s.replace(/\n/g,'\u21b5').replace(/\t/g,'\u2192');}
function fmt(x){return (Math.abs(x)>=100?x.toFixed(0):Math.abs(x)>=1?x.toFixed(2):x.toPrecision(3));}
function blue(a){return 'rgba(21,101,192,'+Math.max(0,Math.min(1,a)).toFixed(3)+')';}
function red(a){return 'rgba(198,40,40,'+Math.max(0,Math.min(1,a)).toFixed(3)+')';}
const info = document.getElementById('info');
"""

ATTENTION_JS = r"""
const T = DATA.tokens.length, NL = DATA.layers.length, NH = DATA.n_heads;
const layerSel = document.getElementById('layer'), headSel = document.getElementById('head');
const modeSel = document.getElementById('mode');
DATA.layers.forEach((L,i)=>{const o=document.createElement('option');o.value=i;o.textContent=L;layerSel.appendChild(o);});
for(let h=0;h<NH;h++){const o=document.createElement('option');o.value=h;o.textContent=h;headSel.appendChild(o);}
// w(li,h,q,k): the post-softmax weight of query q on key k (0 above the diagonal: causal)
function w(li,h,q,k){return k<=q ? DATA.patterns[li][h][q][k] : 0;}
const box = document.getElementById('tokens'); const spans = [];
DATA.tokens.forEach((t,i)=>{const s=document.createElement('span');s.className='tok';s.id='tok-'+i;
  s.textContent=show(t);s.dataset.i=i;box.appendChild(s);spans.push(s);
  s.addEventListener('mouseenter',()=>{hover=i;paint();});
  s.addEventListener('click',()=>{pinned=(pinned===i?null:i);hover=i;paint();});});
box.addEventListener('mouseleave',()=>{hover=null;paint();});
let hover=null, pinned=null;
function cur(){return hover!==null?hover:pinned;}
const OX=110;  // the big heatmap's left margin: the query tokens
function draw(cv, li, h, px, ox){
  cv.width=ox+T*px; cv.height=T*px; const c=cv.getContext('2d');
  c.fillStyle='#fff'; c.fillRect(0,0,ox+T*px,T*px);
  for(let q=0;q<T;q++) for(let k=0;k<=q;k++){c.fillStyle=blue(w(li,h,q,k)); c.fillRect(ox+k*px,q*px,px,px);}
  if(ox){c.fillStyle='#333';c.font=Math.min(12,px-2)+'px Menlo,Consolas,monospace';c.textAlign='right';
    c.textBaseline='middle';DATA.tokens.forEach((t,q)=>c.fillText(show(t).slice(0,14),ox-4,q*px+px/2));}
  const i=cur(); if(i!==null){c.strokeStyle='#c62828';c.lineWidth=Math.max(1,px/6);
    if(modeSel.value==='to') c.strokeRect(ox+0.5,i*px+0.5,T*px-1,px-1); else c.strokeRect(ox+i*px+0.5,0.5,px-1,T*px-1);}
}
const heads = document.getElementById('heads'); const thumbs=[];
for(let h=0;h<NH;h++){const d=document.createElement('div');d.className='head';
  const cv=document.createElement('canvas');const lab=document.createElement('div');lab.textContent='head '+h;
  d.appendChild(cv);d.appendChild(lab);heads.appendChild(d);thumbs.push([d,cv]);
  d.addEventListener('click',()=>{headSel.value=h;paint();});}
const big = document.getElementById('big');
big.addEventListener('mousemove',e=>{const r=big.getBoundingClientRect(), px=r.height/T;
  const k=Math.floor((e.clientX-r.left-OX)/px), q=Math.floor((e.clientY-r.top)/px);
  if(q>=0&&q<T&&k>=0&&k<T){const li=+layerSel.value,h=+headSel.value;
    document.getElementById('cell').textContent='query '+q+' '+JSON.stringify(show(DATA.tokens[q]))+
      ' \u2192 key '+k+' '+JSON.stringify(show(DATA.tokens[k]))+': '+w(li,h,q,k).toFixed(4);}});
function paint(){
  const li=+layerSel.value, h=+headSel.value, i=cur(), to=modeSel.value==='to';
  spans.forEach((s,k)=>{s.classList.toggle('sel',k===i);});
  if(i===null){spans.forEach(s=>{s.style.background='';});
    info.textContent='Hover a token to see what it attends to (click to pin it).';}
  else{
    const vals=[]; for(let k=0;k<T;k++) vals.push(to? w(li,h,i,k) : w(li,h,k,i));
    const mx=Math.max(...vals,1e-9);
    spans.forEach((s,k)=>{s.style.background=blue(vals[k]/mx);
      s.title=(to?'weight of '+i+' on '+k:'weight of '+k+' on '+i)+': '+vals[k].toFixed(4);});
    const order=vals.map((v,k)=>[v,k]).filter(x=>x[0]>0).sort((a,b)=>b[0]-a[0]).slice(0,6);
    info.textContent='layer '+DATA.layers[li]+', head '+h+', token '+i+' '+JSON.stringify(show(DATA.tokens[i]))+
      (to?' attends to:\n':' is attended by:\n')+order.map(x=>'  '+x[0].toFixed(3)+'  '+x[1]+' '+
      JSON.stringify(show(DATA.tokens[x[1]]))).join('\n');
  }
  thumbs.forEach(([d,cv],hh)=>{d.classList.toggle('sel',hh===h);draw(cv,li,hh,Math.max(2,Math.floor(90/T)),0);});
  draw(big,li,h,Math.max(6,Math.min(28,Math.floor(420/T))),OX);
  document.getElementById('bigtitle').textContent='layer '+DATA.layers[li]+', head '+h+
    ': rows are queries, columns keys (colour: weight, 0 to 1)';
}
[layerSel,headSel,modeSel].forEach(x=>x.addEventListener('change',paint));
layerSel.value=DATA.start_layer; paint();
"""

ACTIVATIONS_JS = r"""
const scale = DATA.max_abs > 0 ? DATA.max_abs : 1; const all=[];
DATA.texts.forEach((tx,ti)=>{
  const p=document.createElement('div');p.className='text';document.getElementById('texts').appendChild(p);
  tx.tokens.forEach((t,i)=>{const s=document.createElement('span');s.className='tok';s.id='tok-'+ti+'-'+i;
    s.textContent=show(t);const v=tx.values[i];const out=tx.left_out[i];
    if(out) s.classList.add('out'); else {s.style.background = v>=0 ? red(v/scale) : blue(-v/scale);
      if(Math.abs(v)/scale>0.6) s.style.color='#fff';}
    s.title=fmt(v)+(out?' (left out of the colour scale)':'');
    s.addEventListener('mouseenter',()=>{all.forEach(x=>x.classList.remove('sel'));s.classList.add('sel');
      let ctx=''; for(let j=Math.max(0,i-8);j<=Math.min(tx.tokens.length-1,i+3);j++)
        ctx+=(j===i?'[['+show(tx.tokens[j])+']]':show(tx.tokens[j]));
      info.textContent=DATA.label+' at text '+ti+', position '+i+' '+JSON.stringify(show(t))+': '+fmt(v)+
        (out?' (position 0 / special token: left out of the colour scale)':'')+'\n'+ctx;});
    p.appendChild(s);all.push(s);});});
info.textContent='Hover a token to see the activation. Colour: red positive, blue negative, '+
  'opacity |value| / '+fmt(scale)+' (the largest over the counted tokens).';
"""

LENS_JS = r"""
const T=DATA.tokens.length, NL=DATA.labels.length;
const tab=document.getElementById('lens'); const head=tab.insertRow(); head.appendChild(document.createElement('th'));
DATA.tokens.forEach((t,p)=>{const th=document.createElement('th');th.textContent=show(t);th.title='position '+p;head.appendChild(th);});
const cells=[];
for(let l=0;l<NL;l++){const tr=tab.insertRow(); if(l===NL-1) tr.className='final';
  const th=document.createElement('th');th.textContent=DATA.labels[l];tr.appendChild(th); cells.push([]);
  for(let p=0;p<T;p++){const td=tr.insertCell();td.id='cell-'+l+'-'+p;const pr=DATA.top_probs[l][p][0];
    td.textContent=show(DATA.top_strs[l][p][0]);td.style.background=blue(pr*0.85);
    if(pr>0.55) td.style.color='#fff';
    if(DATA.top_strs[l][p][0]===DATA.final_strs[p]) td.classList.add('hit');
    td.addEventListener('mouseenter',()=>{cells.flat().forEach(c=>c.classList.remove('cur'));td.classList.add('cur');
      info.textContent=DATA.labels[l]+', position '+p+' '+JSON.stringify(show(DATA.tokens[p]))+
        ' \u2192 next token:\n'+DATA.top_strs[l][p].map((s,k)=>'  '+DATA.top_probs[l][p][k].toFixed(3)+'  '+
        JSON.stringify(show(s))).join('\n')+'\n  the final prediction '+JSON.stringify(show(DATA.final_strs[p]))+
        ' has p = '+DATA.final_probs[l][p].toFixed(3)+' here';});
    cells[l].push(td);}}
info.textContent='Hover a cell: the top predictions of that layer at that position. '+
  'Colour: probability of the top token; bold: it is the final layer\'s prediction.';
"""


def _script_json(obj) -> str:
    """JSON safe inside a <script> block (no '</' or '<!--' sequences)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


@dataclass
class View:
    """A self-contained interactive HTML page (see the module docstring).

    ``data`` is exactly what the page's script reads (its JSON); ``body`` is the page's
    static HTML, ``script`` its JavaScript; ``height`` the inline frame's height in pixels.
    """

    kind: str
    title: str
    data: dict
    body: str
    script: str
    meta: str = ""
    height: int = 600
    files: list[Path] = field(default_factory=list)

    def html(self) -> str:
        """The standalone page."""
        return (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1><div class='meta'>{html.escape(self.meta)}</div>"
            f"{self.body}<div id='info'></div>"
            f"<script type='application/json' id='data'>{_script_json(self.data)}</script>"
            f"<script>{COMMON_JS}{self.script}</script></body></html>\n"
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the standalone page to ``path`` (atomically); returns the path."""
        path = Path(path)
        write_text(path, self.html())
        self.files.append(path)
        return path

    def _repr_html_(self) -> str:
        return (
            f'<iframe srcdoc="{html.escape(self.html(), quote=True)}" '
            f'style="width:100%;height:{self.height}px;border:1px solid #ddd" '
            f'sandbox="allow-scripts" title="{html.escape(self.title)}"></iframe>'
        )


def _round(a: np.ndarray, digits: int) -> list:
    return np.round(np.asarray(a, dtype=np.float64), digits).tolist()


# ------------------------------------------------------------------ attention
def attention_view(
    model,
    text: str,
    layers: Sequence[int] | None = None,
    *,
    digits: int = 5,
    title: str | None = None,
) -> View:
    """Attention patterns of ``text`` at every head of ``layers`` (default: all).

    The weights are the model's own ``blocks.L.attn.hook_pattern`` (post-softmax, after the
    rotary embedding and the causal mask), rounded to ``digits`` decimals; ``data['patterns']``
    is ``[layer][head][query][key]`` with keys ``0..query`` (the causal lower triangle).
    Hover a token: the others are shaded by how much it attends to them.
    """
    n = model.cfg.n_layers
    layers = list(range(n)) if layers is None else [int(x) % n for x in layers]
    if not layers:
        raise ValueError("no layers to show")
    tokens = model.to_tokens(text)
    names = [f"blocks.{L}.attn.hook_pattern" for L in layers]
    _, cache = model.run_with_cache(tokens, names_filter=names, stop_at_layer=max(layers) + 1)
    patterns = []
    for nm in names:
        p = to_numpy(cache[nm][0], np.float32)  # (n_heads, query, key)
        patterns.append([[_round(p[h, q, : q + 1], digits) for q in range(p.shape[1])] for h in range(p.shape[0])])  # fmt: skip
    str_tokens = model.to_str_tokens(tokens[0])
    data = {
        "tokens": str_tokens,
        "layers": layers,
        "n_heads": len(patterns[0]),
        "patterns": patterns,
        "start_layer": len(layers) // 2,
    }
    body = (
        "<div class='controls'><label>layer <select id='layer'></select></label>"
        "<label>head <select id='head'></select></label><label>show <select id='mode'>"
        "<option value='to'>what the hovered token attends to</option>"
        "<option value='from'>which tokens attend to it</option></select></label>"
        "<span class='legend'>shading: weight / the largest weight of the hovered token</span></div>"
        "<div class='text' id='tokens'></div><div class='heads' id='heads'></div>"
        "<div class='legend' id='bigtitle'></div><canvas id='big'></canvas><div id='cell' class='legend'></div>"
    )
    return View(
        "attention",
        title or "Attention patterns",
        data,
        body,
        ATTENTION_JS,
        meta=f"{model.source} · {len(str_tokens)} tokens · hook_pattern of layers "
        f"{layers[0]}-{layers[-1]} · {data['n_heads']} heads",
        height=560 + 14 * min(len(str_tokens), 30),
    )


# ------------------------------------------------------------------ token activations
def token_values_view(
    tokens: Sequence[Sequence[str]],
    values: Sequence[Sequence[float]],
    label: str,
    *,
    left_out: Sequence[Sequence[bool]] | None = None,
    title: str | None = None,
    meta: str = "",
) -> View:
    """Per-token numbers over one or more texts, coloured (red positive, blue negative).

    ``tokens[i]`` are the token strings of text i, ``values[i]`` one number per token;
    ``left_out[i][p]`` greys a token and keeps it out of the colour scale (position 0,
    special tokens: the massive activations). Hover a token to read its value.
    """
    if len(tokens) != len(values):
        raise ValueError(f"{len(tokens)} token lists but {len(values)} value lists")
    left_out = left_out or [[p == 0 for p in range(len(t))] for t in tokens]
    texts, counted = [], []
    for t, v, o in zip(tokens, values, left_out, strict=True):
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        if len(t) != len(v) or len(o) != len(v):
            raise ValueError(f"{len(t)} tokens but {len(v)} values")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"non-finite values for {label}")
        texts.append({"tokens": list(t), "values": v.tolist(), "left_out": [bool(x) for x in o]})
        counted.extend(abs(x) for x, out in zip(v, o, strict=True) if not out)
    data = {"label": label, "texts": texts, "max_abs": float(max(counted, default=0.0))}
    return View(
        "activations",
        title or f"Token activations: {label}",
        data,
        "<div id='texts'></div>",
        ACTIVATIONS_JS,
        meta=meta or f"{len(texts)} texts · largest |value| {data['max_abs']:.4g}",
        height=190 + 60 * len(texts),
    )


def _special_mask(model, ids: Sequence[int]) -> list[bool]:
    special = set(getattr(model.tokenizer, "all_special_ids", []) or [])
    return [p == 0 or int(t) in special for p, t in enumerate(ids)]


def neuron_view(model, texts: Sequence[str] | str, hook: str, index: int) -> View:
    """Unit ``index`` of ``hook`` (an MLP neuron at ``blocks.L.mlp.hook_post``, a residual
    dimension, ...) at every token of ``texts``; position 0 and special tokens are greyed."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    model.check_hook_name(hook)
    toks, vals, outs = [], [], []
    for text in texts:
        tokens = model.to_tokens(text)
        _, cache = model.run_with_cache(tokens, names_filter=[hook])
        a = to_numpy(cache[hook][0], np.float32)
        a = a.reshape(a.shape[0], -1)
        if not 0 <= index < a.shape[1]:
            raise ValueError(f"{hook} has {a.shape[1]} units; index {index} is out of range")
        ids = np.asarray(tokens[0]).tolist()
        toks.append(model.to_str_tokens(tokens[0]))
        vals.append(a[:, index])
        outs.append(_special_mask(model, ids))
    return token_values_view(toks, vals, f"{hook}[{index}]", left_out=outs,
                             meta=f"{model.source} · {hook} unit {index} · {len(texts)} texts")  # fmt: skip


# ------------------------------------------------------------------ logit lens
def logit_lens_view(model_or_lens, text: str | None = None, k: int = 5, digits: int = 4) -> View:
    """The logit lens as a layers x positions grid: each cell the top next-token prediction
    of that layer's residual stream (through the final norm and unembedding), shaded by its
    probability; hover for the top ``k``. Takes a model and a text, or a ``LogitLens``."""
    if isinstance(model_or_lens, LogitLens):
        ll, source = model_or_lens, ""
    else:
        if text is None:
            raise ValueError("give a text (or a LogitLens)")
        ll, source = logit_lens(model_or_lens, text, k=k), f"{model_or_lens.source} · "
    final_strs = [ll.top_strs[-1][p][0] for p in range(len(ll.str_tokens))]
    data = {
        "tokens": ll.str_tokens,
        "labels": ll.labels,
        "top_strs": ll.top_strs,
        "top_probs": _round(ll.top_probs, digits),
        "final_strs": final_strs,
        "final_probs": _round(ll.final_probs, digits),
    }
    return View(
        "logit_lens",
        "Logit lens",
        data,
        "<table class='lens' id='lens'></table>",
        LENS_JS,
        meta=f"{source}{len(ll.str_tokens)} tokens · rows: the residual stream after each block "
        "('embed': before the first), read through the final norm and unembedding",
        height=160 + 21 * len(ll.labels),
    )

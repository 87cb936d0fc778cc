"""The analysis (``qcompiler.analysis``) as one self-contained HTML page.

Everything is inline: the charts are SVG drawn here, the style sheet and the few lines of script that
sort the per-layer table are in the page, and the analysis itself is embedded as JSON
(``<script type="application/json" id="analysis-data">``) so a reader or a test can check the page's
numbers against the data it was drawn from. No network, no JavaScript library. The markup is
well-formed XML (every element closed, text escaped), so it also parses as XHTML.

Sections: summary cards; float sanity; weights-only vs activations-only; per layer (sensitivity
chart in graph order, the accuracy/size path with the recommended configuration, a sortable table
ordered by sensitivity with flagged kernels highlighted); target kernels vs simulation (flagged
layers with cause and fix); tensor distributions (histograms with the quantization range marked,
log-scaled counts, most clipped first).
"""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path
from typing import Any

from .sensitivity import nsr_db

CAP_DB = 80.0  # bars for infinite or very high SQNR stop here

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; color: #1d2430; margin: 0;
       background: #f4f6f9; }
main { max-width: 1320px; margin: 0 auto; padding: 20px 28px 60px; }
h1 { font-size: 22px; margin: 8px 0 2px; } h2 { font-size: 18px; margin: 30px 0 8px; border-bottom: 2px solid #d6dce5; }
.sub { color: #5b6575; margin: 0 0 14px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: #fff; border: 1px solid #d6dce5; border-radius: 8px; padding: 10px 14px; min-width: 190px; flex: 1; }
.card b { display: block; font-size: 20px; } .card span { color: #5b6575; font-size: 12px; }
.ok { color: #17803d; } .bad { color: #c0262d; } .warn { color: #b86e00; }
table { border-collapse: collapse; background: #fff; font-size: 12.5px; width: 100%; }
th, td { border: 1px solid #dde2ea; padding: 3px 7px; text-align: right; white-space: nowrap; }
th { background: #e8edf4; cursor: pointer; position: sticky; top: 0; }
td.l, th.l { text-align: left; } td.name { max-width: 420px; overflow: hidden; text-overflow: ellipsis; }
tr.flag td { background: #fde2e1; } tr.float td { color: #7a8494; }
.box { background: #fff; border: 1px solid #d6dce5; border-radius: 8px; padding: 12px; margin: 10px 0; }
.why { background: #eef6ee; border-left: 4px solid #17803d; padding: 8px 12px; margin: 10px 0; }
.flagbox { background: #fff4f3; border-left: 4px solid #c0262d; padding: 8px 12px; margin: 8px 0; }
.scroll { max-height: 720px; overflow: auto; border: 1px solid #d6dce5; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 10px; }
.hist { background: #fff; border: 1px solid #d6dce5; border-radius: 6px; padding: 6px 8px; font-size: 11.5px; }
.hist .t { font-weight: 600; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.legend { font-size: 12px; color: #5b6575; }
svg text { font: 11px system-ui, sans-serif; fill: #3c4656; }
"""

SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th, index) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var up = th.getAttribute('data-order') !== 'up';
    th.setAttribute('data-order', up ? 'up' : 'down');
    rows.sort(function (a, b) {
      var x = a.cells[index].getAttribute('data-v'), y = b.cells[index].getAttribute('data-v');
      var c = (isNaN(parseFloat(x)) || isNaN(parseFloat(y))) ? x.localeCompare(y) : parseFloat(x) - parseFloat(y);
      return up ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _f(value: Any) -> float:
    """A number of the analysis (non-finite ones are strings there)."""
    return float(value)


def _db(value: Any) -> str:
    v = _f(value)
    return "∞" if v == math.inf else "−∞" if v == -math.inf else f"{v:.1f}"


def _capped(value: Any) -> float:
    return max(0.0, min(_f(value), CAP_DB))


def _td(text: str, sort: Any = None, cls: str = "") -> str:
    key = text if sort is None else (f"{_capped(sort) if isinstance(sort, str) else sort}")
    attrs = f' class="{cls}"' if cls else ""
    return f'<td{attrs} data-v="{escape(str(key))}">{escape(text)}</td>'


def _card(title: str, value: str, note: str, cls: str = "") -> str:
    return (f'<div class="card"><span>{escape(title)}</span><b class="{cls}">{escape(value)}</b>'
            f'<span>{escape(note)}</span></div>')


def _bars_h(items: list[tuple[str, float, str]], width: int = 640) -> str:
    """Horizontal bars: (label, dB, colour)."""
    row, left, plot = 26, 150, width - 200
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{row * len(items) + 24}" role="img">']
    for i, (label, value, colour) in enumerate(items):
        y = 4 + i * row
        length = plot * _capped(value) / CAP_DB
        out.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{escape(label)}</text>'
                   f'<rect x="{left}" y="{y}" width="{length:.1f}" height="18" fill="{colour}"/>'
                   f'<text x="{left + length + 6:.1f}" y="{y + 14}">{escape(_db(value))} dB</text>')
    out.append(f'<text x="{left}" y="{row * len(items) + 18}">output SQNR vs FP32 (dB; bars stop at {CAP_DB:.0f})</text>')
    return "".join(out) + "</svg>"


def _sensitivity_chart(layers: list[dict], kernels: dict[str, dict], floor_db: float) -> str:
    """Columns in graph order: output SQNR with the layer quantized alone."""
    height, top, left = 220, 10, 40
    step = max(4.0, min(24.0, 1180.0 / max(len(layers), 1)))
    width = int(left + step * len(layers) + 80)
    scale = (height - top - 30) / CAP_DB
    base = height - 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for db in range(0, int(CAP_DB) + 1, 20):
        y = base - db * scale
        out.append(f'<line x1="{left}" x2="{width - 70}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e7ee"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{db}</text>')
    for i, layer in enumerate(layers):
        value = layer["quantized_alone"]["sqnr_db"]
        h = _capped(value) * scale
        flagged = kernels.get(layer["name"], {}).get("flagged")
        colour = "#c0262d" if flagged else ("#3b6fd1" if layer["precision"] == "int8" else "#e08a1e")
        x = left + i * step
        out.append(f'<rect x="{x + 0.5:.1f}" y="{base - h:.1f}" width="{max(step - 1.5, 1):.1f}" height="{h:.1f}" '
                   f'fill="{colour}"><title>{escape(layer["name"])} ({escape(layer["op"])}): quantized alone '
                   f'{escape(_db(value))} dB, {escape(layer["precision"])}</title></rect>')
    y = base - floor_db * scale
    out.append(f'<line x1="{left}" x2="{width - 70}" y1="{y:.1f}" y2="{y:.1f}" stroke="#17803d" stroke-dasharray="5 3"/>'
               f'<text x="{width - 66}" y="{y + 4:.1f}" style="fill:#17803d">floor {floor_db:.0f} dB</text>'
               f'<text x="{left}" y="{height - 8}">layers in graph order; blue: int8, orange: float at the recommended '
               f'threshold, red: kernel flagged; height: output SQNR (dB) with only that layer quantized</text>')
    return "".join(out) + "</svg>"


def _path_chart(path: list[dict], chosen_size: int, floor_db: float) -> str:
    """The accuracy/size path of mixed-precision: size (x) against output SQNR (y)."""
    width, height, left, bottom = 620, 260, 50, 36
    sizes = [p["size"] / 1e6 for p in path]
    dbs = [_capped(p["errors"]["sqnr_db"]) for p in path]
    lo, hi = min(sizes), max(sizes)
    span = (hi - lo) or 1.0
    db_hi = max(max(dbs), floor_db) + 5

    def xy(size: float, db: float) -> tuple[float, float]:
        return (left + (size - lo) / span * (width - left - 20), height - bottom - db / db_hi * (height - bottom - 12))

    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(s, d) for s, d in zip(sizes, dbs)))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
           f'<polyline points="{points}" fill="none" stroke="#3b6fd1" stroke-width="1.5"/>']
    for s, d, p in zip(sizes, dbs, path):
        x, y = xy(s, d)
        mark = p["size"] == chosen_size
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{6 if mark else 2.5}" fill="{"#17803d" if mark else "#3b6fd1"}">'
                   f'<title>+{escape(str(p["int8"]))}: {s:.3f} MB, {escape(_db(p["errors"]["sqnr_db"]))} dB</title></circle>')
    _, y = xy(lo, floor_db)
    out.append(f'<line x1="{left}" x2="{width - 20}" y1="{y:.1f}" y2="{y:.1f}" stroke="#17803d" stroke-dasharray="5 3"/>'
               f'<text x="{left}" y="{height - 20}">{lo:.3f} MB</text>'
               f'<text x="{width - 20}" y="{height - 20}" text-anchor="end">{hi:.3f} MB</text>'
               f'<text x="{left}" y="{height - 4}">model size (x) vs output SQNR dB (y), all float (right) to all int8 '
               f'(left); green: recommended</text>'
               f'<text x="{left - 6}" y="{xy(lo, db_hi - 5)[1]:.1f}" text-anchor="end">{db_hi - 5:.0f}</text>'
               f'<text x="{left - 6}" y="{height - bottom:.1f}" text-anchor="end">0</text>')
    return "".join(out) + "</svg>"


def _histogram(d: dict) -> str:
    """A small histogram (log-scaled counts) with the quantization range shaded outside."""
    width, height, pad = 284, 84, 4
    edges, counts = d["histogram"]["edges"], d["histogram"]["counts"]
    x0, x1 = edges[0], edges[-1]
    span = (x1 - x0) or 1.0
    top = math.log10(1 + max(counts)) or 1.0

    def x(v: float) -> float:
        return pad + (v - x0) / span * (width - 2 * pad)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    lo, hi = d["range"]
    out.append(f'<rect x="{pad}" y="0" width="{max(x(lo) - pad, 0):.1f}" height="{height - 14}" fill="#fde2e1"/>'
               f'<rect x="{x(hi):.1f}" y="0" width="{max(width - pad - x(hi), 0):.1f}" height="{height - 14}" '
               f'fill="#fde2e1"/>')
    for a, b, c in zip(edges, edges[1:], counts):
        if c:
            h = math.log10(1 + c) / top * (height - 18)
            out.append(f'<rect x="{x(a):.1f}" y="{height - 14 - h:.1f}" width="{max(x(b) - x(a) - 0.4, 0.6):.1f}" '
                       f'height="{h:.1f}" fill="#3b6fd1"/>')
    for v in (lo, hi):
        out.append(f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="0" y2="{height - 14}" stroke="#17803d" stroke-width="1.5"/>')
    out.append(f'<text x="{pad}" y="{height - 2}">{x0:.4g}</text>'
               f'<text x="{width - pad}" y="{height - 2}" text-anchor="end">{x1:.4g}</text>')
    return "".join(out) + "</svg>"


def _layer_table(report: dict) -> str:
    kernels = {k["name"]: k for k in report["kernels"]["kernels"]}
    head = ["#", "layer", "op", "alone SQNR dB", "alone cosine", "float-alone SQNR dB", "precision", "params",
            "MACs %", "kernel SQNR dB", "kernel > 1 LSB %", "flag"]
    rows = []
    order = sorted(range(len(report["layers"])), key=lambda i: _f(report["layers"][i]["quantized_alone"]["sqnr_db"]))
    for i in order:
        r = report["layers"][i]
        k = kernels.get(r["name"])
        flagged = bool(k and k["flagged"])
        cls = "flag" if flagged else ("float" if r["precision"] == "float" else "")
        cells = [_td(str(i), i), _td(r["name"], cls="l name"), _td(r["op"], cls="l"),
                 _td(_db(r["quantized_alone"]["sqnr_db"]), r["quantized_alone"]["sqnr_db"]),
                 _td(f"{r['quantized_alone']['cosine']:.5f}", r["quantized_alone"]["cosine"]),
                 _td(_db(r["float_alone"]["sqnr_db"]), r["float_alone"]["sqnr_db"]),
                 _td(r["precision"], cls="l"), _td(f"{r['params']:,}", r["params"]),
                 _td(f"{100 * r['macs_share']:.2f}", r["macs_share"]),
                 _td(_db(k["sqnr_db"]) if k else "", k["sqnr_db"] if k else -1),
                 _td(f"{100 * k['over_one_lsb']:.2f}" if k and k["over_one_lsb"] is not None else "",
                     k["over_one_lsb"] if k and k["over_one_lsb"] is not None else -1),
                 _td("FLAG" if flagged else "", cls="l")]
        rows.append(f'<tr class="{cls}">' + "".join(cells) + "</tr>")
    header = "".join(f'<th class="{"l" if h in ("layer", "op", "precision", "flag") else ""}">{escape(h)}</th>'
                     for h in head)
    return (f'<div class="scroll"><table class="sortable" id="layers"><thead><tr>{header}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _drift(sanity: dict) -> str:
    """The float graph's SQNR after each pass that modified it; the first one under the limit in red."""
    cells = "".join(f'<td class="{"bad" if d["pass"] == sanity["first_drift"] else ""}">{escape(d["pass"])}<br/>'
                    f'{escape(_db(d["sqnr_db"]))} dB</td>' for d in sanity["passes"])
    note = (f'The float model first falls below {sanity["min_sqnr_db"]:.0f} dB in pass <b class="bad">'
            f'{escape(sanity["first_drift"])}</b>.' if sanity["first_drift"] else "No pass moves the float model "
            f'below {sanity["min_sqnr_db"]:.0f} dB.')
    return (f'<p class="legend">Float outputs after each pass that changed the model (vs the original): {note}</p>'
            f'<div style="overflow-x:auto"><table><tbody><tr>{cells}</tr></tbody></table></div>')


def _thresholds(report: dict) -> str:
    """What compile keeps at other thresholds (the recommended one highlighted)."""
    head = "".join(f"<th>{h}</th>" for h in ("threshold", "int8 layers", "MACs int8 %", "size MB", "SQNR dB",
                                              "cosine"))
    rows = []
    for t in report["thresholds"] + [dict(report["recommendation"], recommended=True)]:
        style = ' style="font-weight:600;background:#eef6ee"' if t.get("recommended") else ""
        rows.append(f"<tr{style}><td>{t['threshold']:g}{' (recommended)' if t.get('recommended') else ''}</td>"
                    f"<td>{t['int8_layers']}/{t['layers']}</td><td>{100 * t['int8_macs_share']:.1f}</td>"
                    f"<td>{t['size'] / 1e6:.3f}</td><td>{escape(_db(t['predicted']['sqnr_db']))}</td>"
                    f"<td>{t['predicted']['cosine']:.5f}</td></tr>")
    return f'<table id="thresholds"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _kernels(report: dict) -> str:
    k = report["kernels"]
    flagged = [r for r in k["kernels"] if r["flagged"]]
    out = [f'<p class="sub">Profile <b>{escape(k["profile"])}</b> ({escape(k["description"])}) on '
           f'{escape(k["model"])}, {k["samples"]} feed(s). Each fused integer kernel gets the inputs the simulation '
           f'computed for it; flagged when its SQNR against the simulation is below {k["min_sqnr_db"]:.0f} dB or '
           f'more than {100 * k["max_off_share"]:.1f}% of its outputs are over 1 LSB off. '
           f'<b class="{"bad" if flagged else "ok"}">{len(flagged)} of {len(k["kernels"])} kernels flagged.</b></p>']
    for r in flagged:
        off = "" if r["over_one_lsb"] is None else f"; {100 * r['over_one_lsb']:.2f}% of outputs over 1 LSB off (max {r['max_lsb']:g})"
        out.append(f'<div class="flagbox"><b>{escape(r["name"])}</b> ({escape(r["kernel"])}): SQNR '
                   f'{escape(_db(r["sqnr_db"]))} dB{escape(off)}; with exact accumulation {escape(_db(r["exact_sqnr_db"]))} dB'
                   f'<br/>cause: {escape(r["cause"])}<br/>fix: {escape(r["fix"])}</div>')
    return "".join(out)


def _distributions(report: dict) -> str:
    items = sorted(report["distributions"], key=lambda d: (-d["clipped"], d["utilisation"]))
    cards = []
    for d in items:
        unit = " (levels, per channel)" if d["unit"] == "levels" else ""
        cls = "bad" if d["clipped"] > 1e-3 else ("warn" if d["utilisation"] < 0.5 else "")
        cards.append(f'<div class="hist"><div class="t" title="{escape(d["name"])}">{escape(d["name"])}</div>'
                     f'<div>{escape(d["kind"])} of {escape(d["layer"])}; min {d["min"]:.4g}, max {d["max"]:.4g}; '
                     f'range [{d["range"][0]:.4g}, {d["range"][1]:.4g}]{escape(unit)}</div>'
                     f'<div class="{cls}">clipped {100 * d["clipped"]:.3f}%, range used {100 * d["utilisation"]:.1f}%'
                     + (f' (worst channel {100 * d["worst_channel_utilisation"]:.1f}%)' if d["per_channel"] else "")
                     + f'</div>{_histogram(d)}</div>')
    return ('<p class="legend">Counts on a log scale; green lines: the quantization range; shaded: clipped by it. '
            'Most clipped first, then least used range.</p><div class="grid">' + "".join(cards) + "</div>")


def render(report: dict[str, Any]) -> str:
    """The HTML page of an analysis (see the module docstring)."""
    s, split, rec = report["sanity"], report["split"], report["recommendation"]
    kernels = {k["name"]: k for k in report["kernels"]["kernels"]}
    flagged = report["kernels"]["flagged"]
    floor_db = nsr_db(rec["floor"])
    p = rec["predicted"]
    cards = "".join([
        _card("float sanity", "PASS" if s["passed"] else "FAIL", f"bypassed vs FP32: {_db(s['bypassed']['sqnr_db'])} dB",
              "ok" if s["passed"] else "bad"),
        _card("all int8 (simulated)", f"{_db(split['all_int8']['sqnr_db'])} dB",
              f"weights only {_db(split['weights_only']['sqnr_db'])} dB, activations only "
              f"{_db(split['activations_only']['sqnr_db'])} dB"),
        _card("recommended --sensitivity-threshold", f"{rec['threshold']:g}",
              f"{_db(p['sqnr_db'])} dB, cosine {p['cosine']:.4f}, {100 * rec['int8_macs_share']:.1f}% MACs int8", "ok"),
        _card("size at the recommendation", f"{rec['size'] / 1e6:.2f} MB",
              f"FP32 {rec['original_size'] / 1e6:.2f} MB ({rec['original_size'] / max(rec['size'], 1):.2f}x)"),
        _card(f"kernels flagged ({report['kernels']['profile']})", str(len(flagged)),
              f"of {len(report['kernels']['kernels'])} fused integer kernels", "bad" if flagged else "ok"),
    ])
    split_chart = _bars_h([("weights only", split["weights_only"]["sqnr_db"], "#3b6fd1"),
                           ("activations only", split["activations_only"]["sqnr_db"], "#8c5cc7"),
                           ("both (all int8)", split["all_int8"]["sqnr_db"], "#1d2430")])
    data = json.dumps(report, sort_keys=True).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    title = f"qcompiler analysis: {Path(report['model']).name}"
    body = f"""<main>
<h1>{escape(title)}</h1>
<p class="sub">pipeline {escape(report['pipeline'])}, target {escape(report['target'])}, calibration
{escape(report['calibration'])}; errors against the FP32 model on {report['samples']} calibration feed(s), simulated
in onnxruntime; {report['evaluations']} model evaluations, {report['seconds']:.1f} s.</p>
<div class="cards">{cards}</div>
<h2>1. Float sanity</h2>
<div class="box"><p>The original model runs in onnxruntime with <b class="{'ok' if s['finite'] else 'bad'}">{'finite' if s['finite'] else 'non-finite'}</b>
outputs ({s['outputs']} output(s), {s['feeds']} feed(s)). With every quantizer bypassed, the pipeline's model
matches it at <b>{escape(_db(s['bypassed']['sqnr_db']))} dB</b> SQNR (cosine {s['bypassed']['cosine']:.6f};
{s['bypassed_quantized_nodes']} nodes left quantized); it must reach {s['min_sqnr_db']:.0f} dB: float rounding
passes, a pipeline bug does not. <b class="{'ok' if s['passed'] else 'bad'}">{'PASS' if s['passed'] else 'FAIL'}</b></p>
{_drift(s)}</div>
<h2>2. Weights-only vs activations-only quantization</h2>
<div class="box">{split_chart}<p class="legend">Cosine: weights only {split['weights_only']['cosine']:.5f},
activations only {split['activations_only']['cosine']:.5f}, both {split['all_int8']['cosine']:.5f}. The lower
bar is where the error comes from (AIMET QuantAnalyzer's first split).</p></div>
<h2>3. Per-layer sensitivity and the recommended threshold</h2>
<div class="why"><b>Recommended: --sensitivity-threshold {rec['threshold']:g}</b>: {rec['int8_layers']} of
{rec['layers']} layers int8, {100 * rec['int8_macs_share']:.1f}% of multiply-accumulates, predicted output SQNR
{escape(_db(p['sqnr_db']))} dB (cosine {p['cosine']:.4f}). Why: {escape(rec['reason'])}.</div>
<div class="box">{_sensitivity_chart(report['layers'], kernels, floor_db)}</div>
<div class="box" style="display:flex;gap:18px;align-items:flex-start">{_path_chart(report['path'], rec['size'], floor_db)}
<div style="flex:1"><p class="legend">What compile keeps at each --sensitivity-threshold (predicted on the
calibration feeds):</p>{_thresholds(report)}</div></div>
<p class="legend">Table ordered by sensitivity (lowest SQNR with the layer quantized alone first); click a header to
sort. Red rows: target kernel flagged; grey rows: float at the recommended threshold.</p>
{_layer_table(report)}
<h2>4. Target kernels vs simulation</h2>
{_kernels(report)}
<h2>5. Tensor distributions</h2>
{_distributions(report)}
</main>"""
    return (f'<!DOCTYPE html>\n<html xmlns="http://www.w3.org/1999/xhtml" lang="en"><head><meta charset="utf-8"/>'
            f'<title>{escape(title)}</title><style>{STYLE}</style></head><body>{body}'
            f'<script type="application/json" id="analysis-data">{data}</script>'
            f'<script>{SORT_SCRIPT}</script></body></html>\n')

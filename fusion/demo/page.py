"""The demo's report page, ``index.html``: a summary (scores, guidance curve, timings, the loss plot), the
caption -> image grid marked by the oracle, the image -> caption table, interleaved stories and the VQ
tokenizer's reconstructions. One self-contained file: every image is inline."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from PIL import Image as PILImage

from fusion.data.synthetic import read_image
from fusion.document import Document, Text
from fusion.files import atomic_path
from fusion.images import to_data_uri

STYLE = """
body{font-family:system-ui,sans-serif;max-width:72em;margin:1.5em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse} td,th{padding:.25em .7em;border-bottom:1px solid #eee;text-align:left}
.big{font-size:1.5em;font-weight:600} .ok{color:#1a7f37} .miss{color:#c62828}
img{image-rendering:pixelated} .grid{display:flex;flex-wrap:wrap;gap:.6em}
.cell{width:7.5em;font-size:.8em;text-align:center} .cell img{width:96px;height:96px;border:1px solid #ddd}
.cell.miss img{border:2px solid #c62828} .story{padding:.6em 0;border-bottom:1px solid #eee}
.story img{width:96px;vertical-align:middle;margin:0 .3em} .plot{max-width:100%}
"""


def _png_file(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _mark(hit: bool) -> str:
    return "<span class='ok'>&#10003;</span>" if hit else "<span class='miss'>&#10007;</span>"


def _summary(cfg, report, out: Path) -> str:
    best = report.best_guidance_scale
    rows = "".join(f"<tr><td>{s}{' (chosen)' if float(s) == best else ''}</td><td>{a['validation']:.1%}</td>"
                   f"<td>{a['test']:.1%}</td></tr>" for s, a in report.guidance.items())
    times = "".join(f"<tr><td>{k}</td><td>{v:.0f} s</td></tr>" for k, v in report.seconds.items())
    plot = out / "lm" / "loss.png"
    return (f"<h2 id='summary'>Summary</h2><table><tr><td>text &rarr; image, oracle accuracy (colour + shape)</td>"
            f"<td class='big'>{report.text_to_image_accuracy:.1%}</td></tr><tr><td>image &rarr; text, caption "
            f"accuracy (colour + shape)</td><td class='big'>{report.image_to_caption_accuracy:.1%}</td></tr></table>"
            f"<p>{cfg.eval_prompts} held-out scenes per direction. Guidance scale {best}, chosen on "
            f"{cfg.val_prompts} other scenes:</p><table><tr><th>guidance scale</th><th>validation</th>"
            f"<th>held-out</th></tr>{rows}</table><h3>Time ({sum(report.seconds.values()):.0f} s in all)</h3>"
            f"<table>{times}</table>" + (f"<h3>Training loss</h3><img class='plot' src='{_png_file(plot)}'>"
                                        if plot.is_file() else ""))


def _decoding(report) -> str:
    """Plain vs speculative decoding of the same held-out captions."""
    rows = "".join(f"<tr><td>{r['decoding']}</td><td>{r['passes_per_image']:.1f}</td><td>{r['batch_seconds']:.1f} s"
                   f"</td><td>{r['single_ms_per_image']:.0f} ms</td><td>{r['accuracy']:.1%}</td></tr>"
                   for r in report.decoding)
    return ("<h3>Plain vs speculative decoding</h3><p>The held-out captions again, at the chosen scale, with the "
            "same seeds. Speculative decoding verifies a window of guessed codes in each decoder pass and keeps "
            "plain sampling's distribution (other samples, so accuracies agree within sampling noise).</p><table>"
            "<tr><th>decoding</th><th>passes per image</th><th>all at once</th><th>one at a time</th>"
            f"<th>oracle accuracy</th></tr>{rows}</table>")


def _image_grid(scores) -> str:
    cells = []
    for scene, doc, hit in zip(scores.test_scenes, scores.test_images, scores.image_hits, strict=True):
        image = doc.images[0] if doc.images else None
        seen = read_image(image) if image is not None else None
        note = "" if hit else f"<br>read: {html.escape(f'{seen.colour} {seen.shape}' if seen else 'no shape')}"
        src = f"<img src='{to_data_uri(image)}'>" if image is not None else "<div>(no image)</div>"
        cells.append(f"<div class='cell{'' if hit else ' miss'}'>{src}<br>{_mark(hit)} "
                     f"{html.escape(scene.caption())}{note}</div>")
    return (f"<h2>Caption &rarr; image ({sum(scores.image_hits)} / {len(cells)} right)</h2>"
            f"<div class='grid'>{''.join(cells)}</div>")


def _caption_table(scores) -> str:
    rows = "".join(f"<tr><td><img width='64' src='{to_data_uri(p)}'></td><td>{_mark(hit)} "
                   f"{html.escape(text.strip())}</td><td>{html.escape(s.caption())}</td></tr>" for s, p, text, hit
                   in zip(scores.test_scenes, scores.pictures, scores.captions, scores.caption_hits, strict=True))
    return (f"<h2>Image &rarr; caption ({sum(scores.caption_hits)} / {len(scores.captions)} right)</h2>"
            f"<table><tr><th>picture</th><th>generated</th><th>truth</th></tr>{rows}</table>")


def _document(doc: Document) -> str:
    return "".join(html.escape(s.text) if isinstance(s, Text) else f"<img src='{to_data_uri(s.image)}'>"
                   for s in doc.segments)


def _stories(scores) -> str:
    stories = "".join(f"<div class='story'>{_document(d)}</div>" for d in scores.stories)
    return ("<h2>Interleaved stories (mixed mode)</h2><p>The opening sentence is the prompt; the rest, text and "
            f"images, is generated.</p>{stories}")


def _reconstructions(out: Path) -> str:
    grid = out / "vq" / "reconstructions.png"
    if not grid.is_file():
        return ""
    width = PILImage.open(grid).width * 4
    return ("<h2>VQ tokenizer: held-out images (top) and their reconstructions from codes (bottom)</h2>"
            f"<img width='{width}' src='{_png_file(grid)}'>")


def write_page(out: Path, cfg, report, scores) -> Path:
    """Write ``out/index.html`` atomically; returns its path."""
    body = "".join([_summary(cfg, report, out), _decoding(report), _image_grid(scores), _caption_table(scores),
                    _stories(scores), _reconstructions(out)])
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>fusion demo</title><style>{STYLE}</style>"
            f"</head><body><h1>fusion demo: the synthetic world</h1><p>BPE text tokenizer, <code>tiny</code> VQ "
            f"image tokenizer and <code>tiny</code> decoder trained on {cfg.documents} procedurally generated "
            f"documents on this machine's CPU; scored by the world's oracle.</p>{body}</body></html>\n")
    path = out / "index.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page)
    return path

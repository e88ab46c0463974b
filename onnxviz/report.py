"""``onnxviz report``: one self-contained HTML page showing what a model has learned and where it looks.

Everything is embedded (PNG data URIs, inline CSS); the page needs no network and no scripts. The
work is a list of sections, each built by one function from the pieces the library already has:
``model_summary`` / ``layer_table`` (graph), ``plan`` (gradient coverage), ``Maximizer`` (channel and
class visualizations), ``attribute`` (saliency, integrated gradients, Grad-CAM overlays).
"""

from __future__ import annotations

import base64
import html
import io
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from .attribution import Attributor, attribute
from .autodiff import plan, prepare
from .datasets import SHAPE_CLASSES, make_shapes
from .errors import OnnxvizError, RewriteError
from .fileio import check_outputs, check_suffix, write_files
from .fvsanity import visualization_sanity
from .graph import (META_CLASSES, check_class_names, conv_layers, layer_output, layer_table, load_model, model_summary,
                    set_metadata)
from .graph import class_names as metadata_class_names
from .images import load_images, model_input
from .maximize import Maximizer
from .priors import resolve_prior
from .render import grid_image, overlay
from .rewrite import to_logits
from .runtime import available_providers
from .version import __version__

#: Attribution methods shown per example image (label, attribute() method name).
ATTRIBUTION_METHODS = (("saliency", "vanilla"), ("integrated gradients", "ig"), ("Grad-CAM", "gradcam"))
Progress = Callable[[str, int, int], Any]  # (what, done, total)


@dataclass
class ReportRecord:
    """What the report contains, as data (also what the CLI prints with --json)."""

    model: str
    layers: list[str]
    units_per_layer: int
    images: list[str]
    seed: int
    steps: int | None
    gradient_method: str
    unsupported_ops: list[str]
    command: str = ""
    seconds: float = 0.0
    sections: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sanity: dict[str, Any] | None = None  # the class images' randomized-model control (fvsanity)
    prior: dict[str, Any] | None = None  # the image prior of the class pictures, if any
    classes: list[int] = field(default_factory=list)  # the output units the class pictures show


def spread(n: int, count: int) -> list[int]:
    """``count`` indices of ``range(n)`` evenly spread, first and last included (all when fewer)."""
    if n <= count:
        return list(range(n))
    return list(dict.fromkeys(np.linspace(0, n - 1, count).round().astype(int).tolist()))


def auto_layers(model: onnx.ModelProto, count: int = 3) -> list[str]:
    """A handful of conv layers spread over the network: the first, the last and evenly between."""
    convs = conv_layers(model)
    if len(convs) <= count:
        return convs
    return [convs[i] for i in spread(len(convs), count)]


def example_images(model: onnx.ModelProto, spec: Any, n: int = 4, seed: int = 0) -> tuple[np.ndarray, list[str]] | None:
    """Inputs the project can make itself for a shipped-like model: rendered digits for 28x28
    grayscale inputs, generated coloured shapes for 64x64 RGB ones. (N, H, W, C) in [0, 1]."""
    if spec.channels == 1 and (spec.height, spec.width) == (28, 28):
        return _rendered_digits(n, seed), [f"rendered '{d}'" for d in _digits(n, seed)]
    if spec.channels == 3 and spec.height == spec.width and spec.height >= 16:
        images, labels = make_shapes(n, size=spec.height, seed=seed)
        return images.astype(np.float32) / 255.0, [f"generated {SHAPE_CLASSES[i]}" for i in labels]
    return None


def _digits(n: int, seed: int) -> list[int]:
    return [int(d) for d in np.random.default_rng(seed).permutation(10)[:n]]


def _rendered_digits(n: int, seed: int) -> np.ndarray:
    """Digits drawn with Pillow's built-in font, centred and scaled like MNIST (20x20 in 28x28)."""
    from PIL import Image, ImageDraw, ImageFont

    out = []
    for d in _digits(n, seed):
        canvas = Image.new("L", (64, 64), 0)
        draw = ImageDraw.Draw(canvas)
        try:
            font = ImageFont.load_default(size=48)
        except TypeError:  # Pillow < 10.1: fixed bitmap font
            font = ImageFont.load_default()
        draw.text((32, 32), str(d), fill=255, font=font, anchor="mm")
        box = canvas.getbbox() or (0, 0, 64, 64)
        glyph = canvas.crop(box)
        scale = 20.0 / max(glyph.size)
        glyph = glyph.resize((max(1, round(glyph.size[0] * scale)), max(1, round(glyph.size[1] * scale))),
                             Image.LANCZOS)
        digit = Image.new("L", (28, 28), 0)
        digit.paste(glyph, ((28 - glyph.size[0]) // 2, (28 - glyph.size[1]) // 2))
        out.append(np.asarray(digit, np.float32)[..., None] / 255.0)
    return np.stack(out)


# ---------------------------------------------------------------------------------------- html bits
def _png(image: Any) -> str:
    """A data URI of a Pillow image or a uint8 array."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(image: Any, alt: str, width: int | None = None) -> str:
    size = f' width="{width}"' if width else ""
    return f'<img src="{_png(image)}" alt="{html.escape(alt)}"{size}>'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _shape(shape: Any) -> str:
    return "?" if shape is None else "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:26px;margin:0 0 4px} h2{font-size:19px;margin:0 0 12px}
section{background:#fff;border:1px solid #e0e3e8;border-radius:8px;padding:18px 20px;margin:18px 0}
table{border-collapse:collapse;font-size:12.5px;width:100%} th,td{border-bottom:1px solid #eceef1;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f5} .muted{color:#68717d} .warn{color:#9a4b00;font-weight:600}
.cards{display:flex;flex-wrap:wrap;gap:14px} .card{border:1px solid #e6e8ec;border-radius:6px;padding:10px}
.card figure{display:inline-block;margin:0 8px 0 0;text-align:center} figcaption{font-size:12px;color:#4a525c}
img{image-rendering:pixelated;max-width:100%} code,pre{background:#f0f2f5;border-radius:4px;padding:2px 4px}
pre{padding:10px;white-space:pre-wrap} .layertable{max-height:420px;overflow:auto}
"""


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}"><h2>{html.escape(title)}</h2>{body}</section>'


def sanity_section(check: Any) -> str:
    """The randomized-model control of the class images (a :class:`~onnxviz.fvsanity.VisualizationSanity`):
    the trained model's images above each randomized copy's (same units, same seed, columns aligned),
    the numbers per stage, and the verdict."""
    rows = []
    for stage in check.stages:
        what = "trained model" if not stage.layers else f"randomized from the top: {', '.join(stage.layers)}"
        grid = grid_image(stage.images[0], check.labels, layout=check.layout, value_range=check.value_range,
                          cols=len(check.labels), tile=56)
        rows.append(f"<figure>{_img(grid, f'stage {stage.index}: {what}')}<figcaption>stage {stage.index}: "
                    f"{html.escape(what)}</figcaption></figure>")
    response = "trained-model p(target)" if check.mode == "class" else "relative response"
    header = ["stage", "randomized layers", "recognised (chance)", response, "SSIM", "Spearman"]
    css = {"PASS": "muted", "FAIL": "warn", "INCONCLUSIVE": "warn"}[check.verdict]
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in check.reasons)
    rec = check.recognition
    return (f'<p class="muted">The same recipe (settings, seed {check.seeds[0]}, units) on copies of the model whose '
            "weights are re-drawn from the top weight layer down. Pictures that come from the model lose their "
            "meaning with its weights: the trained model should read the copies' images as their targets no more "
            "than chance, and they should look different (SSIM, Spearman against the trained image of the same "
            "unit).</p>"
            f'<div class="cards"><div class="card">{"<br>".join(rows)}</div></div>'
            + _table(header, check.rows())
            + f'<p class="{css}">verdict: {html.escape(check.verdict)} — randomized stages together '
              f"{int(rec['recognised'])}/{int(rec['images'])} read as their targets (chance {rec['chance']:.1f}, "
              f"p = {rec['p_value']:.2g}); {check.seconds:.1f} s</p>"
            + (f"<ul>{reasons}</ul>" if reasons else ""))


# ---------------------------------------------------------------------------------------- the report
@dataclass
class _Job:
    """What every section of one report reads: the model, its labels, the engine and the record."""

    model: onnx.ModelProto
    source_label: str
    names: list[str] | None
    engine: Maximizer
    record: ReportRecord
    plan: Any
    prior: Any
    seed: int
    steps: int | None
    providers: str


def build_report(model: onnx.ModelProto | str | bytes, *, layers: Sequence[str] | str = "auto",
                 units_per_layer: int = 8, images: Sequence[str] | None = None, steps: int | None = None,
                 seed: int = 0, providers: str = "auto", command: str | None = None,
                 progress: Progress | None = None, sanity: bool = True,
                 class_names: Any = None, prior: Any = "auto", classes: int = 10) -> tuple[str, ReportRecord]:
    """Build the report page; returns (html, record). Nothing is written (see :func:`write_report`).
    ``sanity``: also run the randomized-model control of the class images (:mod:`onnxviz.fvsanity`).
    ``class_names`` (a list, a names file or ``"a,b,c"``) label the classes everywhere on the page
    over the metadata's ``onnxviz.class_names``. ``prior`` (as in :func:`~onnxviz.maximize.maximize`;
    ``"auto"``: ``MODEL.prior.npz`` beside a model file) shapes the class pictures and their control.
    ``classes``: at most this many class pictures, spread over the output units (all when fewer):
    the work is bounded by the options, not by the model."""
    if units_per_layer < 1 or classes < 1:
        raise OnnxvizError("units_per_layer and classes must be at least 1")
    started = time.perf_counter()
    job = _start(model, layers, units_per_layer, images, steps, seed, providers, command, class_names, prior)
    record = job.record
    report = progress or (lambda what, done, total: None)
    total = len(record.layers) + 2 + int(sanity)
    parts = [_summary_section(job), _layers_section(job)]
    parts.append(_channels_section(job, units_per_layer, report, total))
    done = len(record.layers)
    report("classes", done, total)
    parts.append(_classes_section(job, classes))
    done += 1
    if sanity:
        report("sanity check", done, total)
        parts.append(_sanity_control_section(job))
        done += 1
    report("attribution", done, total)
    parts.append(_attribution_section(job, images))
    done += 1
    report("done", done, total)
    record.seconds = time.perf_counter() - started
    parts.append(_reproducibility_section(job))
    record.sections = ["summary", "layers", "channels", "classes", *(["sanity"] if sanity else []), "attribution",
                       "reproducibility"]
    return _page(job.source_label, parts), record


def _start(model: Any, layers: Sequence[str] | str, units_per_layer: int, images: Sequence[str] | None,
           steps: int | None, seed: int, providers: str, command: str | None, class_names: Any,
           prior: Any) -> _Job:
    """Load the model, apply the caller's class names, plan its gradient, open the engine."""
    source_label = str(model) if isinstance(model, (str, Path)) else "model"
    source_path = Path(model) if isinstance(model, (str, Path)) else None
    model = load_model(model)
    if class_names is not None:  # the caller's names, for every label below (the file is not changed)
        names: list[str] | None = list(check_class_names(model, class_names))
        model = set_metadata(model, **{META_CLASSES: names})
    else:
        names = metadata_class_names(model)
    try:
        logits_model = to_logits(model)
    except RewriteError:
        logits_model = model
    the_plan = plan(*prepare(logits_model))
    chosen = auto_layers(model) if layers == "auto" else [layer_output(model, name) for name in layers]
    record = ReportRecord(model=source_label, layers=list(chosen), units_per_layer=units_per_layer,
                          images=[str(p) for p in images or []], seed=seed, steps=steps,
                          gradient_method="graph" if the_plan.supported else "fd",
                          unsupported_ops=sorted(the_plan.unsupported),
                          command=command or "onnxviz.report.build_report(...)")
    engine = Maximizer(model, providers=providers)
    used_prior = resolve_prior(prior, model, source_path, engine.input)
    record.prior = None if used_prior is None else used_prior.describe()
    return _Job(model, source_label, names, engine, record, the_plan, used_prior, seed, steps, providers)


def _summary_section(job: _Job) -> str:
    summary = model_summary(job.model)
    inputs = [(i["name"], _shape(i["shape"]), i["dtype"], i["layout"] or "-", f"[{i['range'][0]:g}, {i['range'][1]:g}]"
               + (" (guessed)" if i.get("range_guessed") else "")) for i in summary["inputs"]]
    outputs = [(o["name"], _shape(o["shape"]), o["dtype"] or "?") for o in summary["outputs"]]
    ops = ", ".join(f"{op} ×{n}" for op, n in summary["ops"].items())
    ops_in_path = sorted({n.op_type for n in job.plan.nodes})
    if job.plan.supported:
        coverage = html.escape(f"every op on the path from the input to the logits has a gradient rule "
                               f"({', '.join(ops_in_path)}): gradients come from the ONNX gradient graph.")
    else:
        missing = "; ".join(f"{op} ({', '.join(n[:3])})" for op, n in job.plan.unsupported.items())
        coverage = (f'<span class="warn">No gradient rule for: {html.escape(missing)}.</span> '
                    "Visualizations and saliency below use finite differences (slower, approximate).")
    body = (f"<p><b>{html.escape(job.source_label)}</b> — opset {summary['opset']}, producer "
            f"{html.escape(str(summary['producer'] or '?'))}, {summary['parameters']:,} parameters, "
            f"{summary['nodes']} nodes.</p>"
            f"<h3>Inputs</h3>{_table(['name', 'shape', 'dtype', 'layout', 'value range'], inputs)}"
            f"<h3>Outputs</h3>{_table(['name', 'shape', 'dtype'], outputs)}"
            + (f"<h3>Classes</h3><p>{html.escape(', '.join(job.names))}</p>" if job.names else "")
            + f"<h3>Ops</h3><p>{html.escape(ops)}</p>"
            f"<h3>Gradient coverage</h3><p>{coverage}</p>")
    return _section("summary", "Model summary", body)


def _layers_section(job: _Job) -> str:
    rows = [(l.index, l.name, l.op_type, ", ".join(l.outputs), "; ".join(_shape(s) for s in l.shapes))
            for l in layer_table(job.model)]
    return _section("layers", "Layers", '<div class="layertable">'
                    + _table(["#", "name", "op", "outputs", "shape"], rows) + "</div>")


def _channels_section(job: _Job, units_per_layer: int, report: Progress, total: int) -> str:
    body = ""
    for done, tensor in enumerate(job.record.layers):
        report(f"layer {tensor}", done, total)
        count = job.engine.layer_size(tensor, logits=False)
        units = list(range(min(units_per_layer, count)))
        result = job.engine.run(tensor, units, steps=job.steps, seed=job.seed, logits=False)
        grid = grid_image(result.images, result.labels, layout=result.layout, value_range=result.value_range)
        body += (f'<div class="card"><h3>{html.escape(tensor)}</h3><p class="muted">channels '
                 f"{units[0]}–{units[-1]} of {count}, {result.settings.get('steps')} steps, "
                 f"{result.seconds:.1f} s</p>{_img(grid, f'channels of {tensor}')}</div>")
    if not job.record.layers:
        body = '<p class="muted">No convolution layers found; nothing to show per channel.</p>'
    return _section("channels", "What the convolution channels respond to", body)


def _classes_section(job: _Job, classes: int) -> str:
    count = job.engine.layer_size(None)
    job.record.classes = spread(count, classes)
    shown = job.engine.run(None, job.record.classes, steps=job.steps, seed=job.seed, prior=job.prior)
    grid = grid_image(shown.images, shown.labels, layout=shown.layout, value_range=shown.value_range)
    how = (f"with a {job.prior.kind} image prior fitted on {job.prior.samples:,} sample images"
           if job.prior is not None else "no image prior")
    which = f"{len(shown.labels)} output units" if len(shown.labels) == count else \
        f"{len(shown.labels)} of {count} output units (spread evenly)"
    return _section("classes", "What each class looks like to the model",
                    f'<p class="muted">{which} as logits '
                    f"(final activation stripped), {shown.settings.get('steps')} steps, {how}, "
                    f"{shown.seconds:.1f} s</p>{_img(grid, 'class visualizations')}")


def _sanity_control_section(job: _Job) -> str:
    try:
        check = visualization_sanity(job.model, None, job.record.classes, seed=job.seed, steps=job.steps,
                                     providers=job.providers, prior=job.prior)
        job.record.sanity = check.to_dict()
        body = sanity_section(check)
    except OnnxvizError as e:  # e.g. no weight layers to re-draw
        body = f'<p class="muted">No randomized-model control: {html.escape(str(e))}</p>'
    return _section("sanity", "Do the class pictures come from the model? (randomized-model control)", body)


def _attribution_section(job: _Job, images: Sequence[str] | None) -> str:
    spec = model_input(job.model)
    att = Attributor(job.model, providers=job.providers)
    if images:
        loaded = load_images(list(images), spec)
        x, unit_images, labels = loaded.batch, loaded.unit, loaded.labels
        job.record.notes.extend(loaded.notes)
        origin = "given images"
    else:
        made = example_images(job.model, spec, seed=job.seed)
        x = None
        if made is not None:
            unit_images, labels = made
            x = spec.to_model(unit_images)
        origin = "examples made by onnxviz (no images given)"
    if x is None:
        body = '<p class="muted">No images given (--images) and none can be made for this input kind.</p>'
        return _section("attribution", "Where the model looks", body)
    probs = att.probabilities(x)
    maps = {name: attribute(att, x, m).maps for name, m in ATTRIBUTION_METHODS}
    cards = []
    for i, label in enumerate(labels):
        top = int(np.argmax(probs[i]))
        cls = job.names[top] if job.names and top < len(job.names) else str(top)
        figs = [f"<figure>{_img(_upscaled(unit_images[i]), label, 140)}<figcaption>{html.escape(label)}"
                f"</figcaption></figure>"]
        for name, _ in ATTRIBUTION_METHODS:
            ov = overlay(unit_images[i], maps[name][i], layout="NHWC", value_range=(0.0, 1.0))
            figs.append(f"<figure>{_img(_upscaled(ov), name, 140)}<figcaption>{name}</figcaption></figure>")
        cards.append(f'<div class="card"><p>prediction: <b>{html.escape(cls)}</b> '
                     f"({100 * probs[i, top]:.1f}%)</p>{''.join(figs)}</div>")
    body = (f'<p class="muted">{html.escape(origin)}; maps explain the top class.</p>'
            f'<div class="cards">{"".join(cards)}</div>')
    return _section("attribution", "Where the model looks", body)


def _reproducibility_section(job: _Job) -> str:
    import onnxruntime  # heavy: loaded only when a report is built

    record = job.record
    provider = "CUDA" if job.providers != "cpu" and "CUDAExecutionProvider" in available_providers() else "CPU"
    repro = [("command", record.command), ("seed", job.seed),
             ("onnxviz", __version__), ("onnxruntime", onnxruntime.__version__), ("onnx", onnx.__version__),
             ("numpy", np.__version__), ("python", platform.python_version()), ("provider", provider),
             ("gradients", record.gradient_method), ("time taken", f"{record.seconds:.1f} s")]
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in record.notes)
    return _section("reproducibility", "Reproducibility", _table(["", ""], repro)
                    + (f"<h3>Notes</h3><ul>{notes}</ul>" if notes else ""))


def _page(source_label: str, parts: Sequence[str]) -> str:
    title = f"onnxviz report — {Path(source_label).name}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body><main><h1>{html.escape(title)}</h1>"
            f'<p class="muted">What the network has learned and where it looks — made by onnxviz '
            f"{__version__} from the ONNX file alone.</p>{''.join(parts)}</main></body></html>")


def _upscaled(image: np.ndarray, size: int = 140) -> np.ndarray:
    """A (H, W, C) picture in [0, 1] or uint8, as uint8 RGB scaled up (nearest) to about ``size`` px."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    k = max(1, size // max(img.shape[:2]))
    return np.repeat(np.repeat(img, k, axis=0), k, axis=1)


def write_report(model: onnx.ModelProto | str | bytes, output: str | Path, **options: Any) -> ReportRecord:
    """Build the report and write it atomically to ``output``, an ``.html`` file name (no partial
    file on failure). The destination is checked before the work, not after it."""
    check_outputs([output])
    check_suffix(output, (".html", ".htm"), "report")
    page, record = build_report(model, **options)
    write_files([(output, page.encode("utf-8"))])
    return record

"""The ``onnxviz`` command line. Thin: every command parses, calls the library, prints.

Adding a command is one function decorated with ``@app.command()`` (alias ``command``): the app's
group class turns any :class:`~onnxviz.errors.OnnxvizError` raised by any command into one
``error: <message>`` line on stderr and exit code 2; other exceptions keep their traceback. Usage
errors (an unknown option, ``--steps abc``) are one such line too, and Ctrl-C or SIGTERM says it
interrupted the command and whether any file was written (temp files are removed on the way out).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, Callable

import typer
from typer.core import TyperGroup

from .errors import OnnxvizError

__all__ = ["app", "command", "main", "demo", "EXIT_USER_ERROR"]

EXIT_USER_ERROR = 2


def _printable(text: Any) -> str:
    """``text`` with control characters written out (``\\x1b``): names and metadata come from the
    model file, and an escape sequence in one must not retitle, clear or recolour the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def report_user_error(error: Exception | str) -> None:
    """Print ``error: <message>`` as one line on stderr."""
    message = _printable(" ".join(str(error).split())) or type(error).__name__
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean-up (temp files) and message follow."""

    signum = int(signal.SIGTERM)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


class OnnxvizGroup(TyperGroup):
    """Runs subcommands so that user errors end as one line and exit code 2, never a traceback."""

    def invoke(self, ctx: Any) -> Any:  # a click Context (typer may vendor click)
        from . import fileio

        before = fileio.files_written
        try:
            return super().invoke(ctx)
        except OnnxvizError as e:
            report_user_error(e)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt as e:  # Ctrl-C; SIGTERM too (see main)
            done = fileio.files_written - before
            report_user_error(f"interrupted after writing {done} file{'s' if done > 1 else ''}" if done
                              else "interrupted; no file was written")
            raise typer.Exit(128 + getattr(e, "signum", int(signal.SIGINT))) from None

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        """As click's, but a usage error (unknown option or command, a bad value) is one ``error:``
        line and exit code 2 like every other user error, not a boxed message."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        from typer.core import _click

        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _click.exceptions.ClickException as e:
            if not isinstance(e, _click.exceptions.NoArgsIsHelpError):  # that one has shown the help
                hint = f" (see '{e.ctx.command_path} --help')" if getattr(e, "ctx", None) is not None else ""
                report_user_error(e.format_message() + hint)
            sys.exit(e.exit_code)
        except typer.Abort:
            report_user_error("aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="onnxviz",
    cls=OnnxvizGroup,
    help="See what a trained neural network has learned — for any ONNX model, on onnxruntime alone.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
#: Decorator for new commands: ``@command()`` is ``@app.command()``.
command = app.command


def _version_callback(value: bool) -> None:
    if value:
        from .version import __version__

        typer.echo(f"onnxviz {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Show the version and exit.", callback=_version_callback,
                                          is_eager=True)] = False,
) -> None:
    """See what a trained neural network has learned — for any ONNX model, on onnxruntime alone."""


# ----------------------------------------------------------------------------------- helpers
def _console():
    """A rich console for text from model files: markup and emoji codes off, and every string
    printed has its control characters written out (tables take ``_shown`` cells)."""
    from rich.console import Console

    class _Plain(Console):
        def print(self, *objects: Any, **options: Any) -> None:
            super().print(*(_printable(o) if isinstance(o, str) else o for o in objects), **options)

    return _Plain(soft_wrap=False, markup=False, emoji=False)


def _fmt_shape(shape: Any) -> str:
    """``(N, 32, 26, 26)``; unknown dims, and those shape inference named itself (``unk__0``), are ``?``."""
    if shape is None:
        return "?"
    return "(" + ", ".join("?" if d is None or str(d).startswith("unk__") else str(d) for d in shape) + ")"


def _shown(text: Any, width: int | None = None):
    """Text from a model file as a rich ``Text``: never markup, control characters (terminal
    escape sequences) written out as ``\\x1b``, elided in the middle beyond ``width``."""
    from rich.text import Text

    text = _printable(text)
    if width is not None and len(text) > width:
        head = (width - 1) // 2
        text = text[:head] + "…" + text[len(text) - (width - 1 - head):]
    return Text(text)


def _nodes_table(layers: list, title: str | None = None):
    from rich.table import Table

    table = Table(title=_shown(title) if title is not None else None, show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("name", overflow="fold")
    table.add_column("op")
    table.add_column("outputs", overflow="fold")
    table.add_column("shape")
    for layer in layers:
        table.add_row(str(layer.index), _shown(layer.name or ""), _shown(layer.op_type),
                      _shown(", ".join(layer.outputs)), _shown("; ".join(_fmt_shape(s) for s in layer.shapes)))
    return table


def _model_layers_table(rows: list, width: int):
    """One line per layer within ``width`` columns: long names elided in the middle, the output
    tensor and the ops giving way first."""
    from rich import box
    from rich.table import Table

    cells = [(_shown(r.name), _shown(r.output), _shown(_fmt_shape(r.shape)),
              f"{r.parameters:,}" if r.kind == "layer" else "", _shown(", ".join(r.op_types) or r.kind))
             for r in rows]
    header = ("layer", "output", "shape", "params", "ops")
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    for col, least in ((1, 18), (4, 10), (0, 16), (2, 12), (1, 6), (4, 4), (0, 8)):  # (column, narrowest)
        widths[col] = max(min(least, widths[col]), widths[col] - (sum(widths) + 3 * (len(header) - 1) - width))
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for i, name in enumerate(header):
        table.add_column(name, justify="right" if name == "params" else "left", no_wrap=True,
                         overflow="ellipsis", width=widths[i])
    for row in cells:
        table.add_row(*[_shown(c, widths[i]) if i < 3 else c for i, c in enumerate(row)])
    return table


@contextlib.contextmanager
def _progress(description: str, unit: str = "", quiet: bool = False):
    """The one progress display: a transient bar on stderr while the block runs, where stderr is a
    terminal and not ``quiet``. Yields ``update(completed=, total=, description=)`` for the bar (with
    ``unit``, it also shows ``completed/total unit``), or None where there is no bar."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    counts = [TextColumn("{task.completed}/{task.total} " + unit)] if unit else []
    with Progress(TextColumn("{task.description}"), BarColumn(), *counts, TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield lambda **fields: bar.update(task, **fields)


def _echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


def _parse_shapes(text: str | None) -> list[tuple[int, ...]] | None:
    """``1,28,28,1`` → one shape; ``1,3;1,5`` → one per input."""
    if text is None:
        return None
    shapes = []
    for part in text.replace(" ", "").split(";"):
        try:
            dims = tuple(int(d) for d in part.strip("()[]").split(",") if d)
        except ValueError:
            raise OnnxvizError(f"bad --input-shape {text!r}: expected integers like 1,28,28,1") from None
        if not dims or any(d <= 0 for d in dims):
            raise OnnxvizError(f"bad --input-shape {text!r}: expected positive integers like 1,28,28,1")
        shapes.append(dims)
    return shapes


# options several commands share, each declared once (``typing.Annotated``; the default is the
# parameter's: ``providers: Providers = "auto"``)
#: How every --layer is read (onnxviz.graph.find_layer): names first, an integer is an index only
#: when it names nothing.
_LAYER_HELP = ("a layer as `onnxviz layers` lists it (preds, conv2d_1, layer4.1.conv2), a tensor or node name, "
               "or a node index as `layers --nodes` numbers them; names win: '3' is a tensor named 3 if the "
               "model has one")
ModelFile = Annotated[str, typer.Argument(help="ONNX model file.")]
Images = Annotated[list[str], typer.Argument(help="PNG / JPEG / NPY images (an NPY may hold a batch).")]
Figure = Annotated[Path, typer.Option("-o", "--output", help="PNG figure: each image, then one overlay per method.")]
Unit = Annotated[str | None, typer.Option("--unit", "-u", help="Class index or name (default: each image's top class); "
                                                               "a comma list gives one per image.")]
SaveMaps = Annotated[Path | None, typer.Option("--save-npy", help="Also write the maps: (images, H, W) at the model "
                                               "input's resolution; (methods, images, H, W) for several methods.")]
TargetLayer = Annotated[str | None, typer.Option("--layer", "-l", help=f"Target: {_LAYER_HELP} (default: logits of "
                                                                       "the first output).")]
Steps = Annotated[int | None, typer.Option("--steps", help="Optimization steps (default: by input kind).")]
Gradient = Annotated[str, typer.Option("--gradient", help="auto | graph | fd.")]
Providers = Annotated[str, typer.Option("--providers", help="auto | cpu | cuda.")]
InputShape = Annotated[str | None, typer.Option("--input-shape", help="Input shape for dynamic dims, e.g. 1,3,224,224.")]
InputRange = Annotated[str | None, typer.Option("--input-range", help="Input value range, e.g. 0,1 (default: metadata).")]
Metrics = Annotated[bool, typer.Option("--metrics", help="Print deletion / insertion AUC (and a random order's).")]
Sanity = Annotated[bool, typer.Option("--sanity", help="Print the model-randomization sanity check.")]
Cmap = Annotated[str, typer.Option("--cmap", help="Matplotlib colormap of the overlays.")]
Alpha = Annotated[float, typer.Option("--alpha", help="Overlay opacity.")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help="Inputs per onnxruntime run (default: auto).")]
ClassNames = Annotated[str | None, typer.Option("--class-names", help="Class names: a file (one name per line, or a "
                                                "JSON list) or a,b,c (as many as the output has units; default: the "
                                                "metadata's).")]


# ----------------------------------------------------------------------------------- commands
@command()
def layers(
    model: ModelFile,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
    layer: Annotated[str | None, typer.Option("--layer", "-l", help=f"Show only the layer holding this: "
                                                                    f"{_LAYER_HELP}.")] = None,
    nodes: Annotated[bool, typer.Option("--nodes", help="One row per ONNX node (index, name, op, outputs, shapes).")] = False,
) -> None:
    """List the layers as the framework knew them (Keras layers, PyTorch modules): output tensor,
    shape, parameters, ops. Any --layer option takes the names this table shows."""
    from .graph import find_layer, layer_table, load_model, model_layer, model_layers

    loaded = load_model(model)
    if nodes:
        rows: list = [find_layer(loaded, layer)] if layer is not None else layer_table(loaded)
    else:
        rows = [model_layer(loaded, layer)] if layer is not None else model_layers(loaded)
    if as_json:
        _echo_json([row.to_dict() for row in rows])
        return
    con = _console()
    if nodes:
        con.print(_nodes_table(rows, title=str(model)))
        return
    con.print(_shown(model), no_wrap=True, overflow="ellipsis")
    con.print(_model_layers_table(rows, con.width))
    if layer is None:
        counted = [r for r in rows if r.kind == "layer"]
        con.print(f"{sum(r.parameters for r in counted):,} parameters in {len(counted)} layers "
                  f"({len(loaded.graph.node)} nodes: --nodes lists them)", markup=False, no_wrap=True,
                  overflow="ellipsis")


@command()
def info(
    model: ModelFile,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Inputs (shape, layout, value range), outputs, opset, producer, parameters, ops, metadata."""
    from .graph import load_model, model_summary

    summary = model_summary(load_model(model))
    summary = {"file": str(model), **summary}
    if as_json:
        _echo_json(summary)
        return
    from types import SimpleNamespace

    from rich.table import Table
    from rich.text import Text

    con = _console()
    # names, paths and metadata are the model's content: _shown Text, never markup or escape codes
    con.print(Text.assemble((_printable(model), "bold"), _printable(f"  opset {summary['opset']}, IR "
              f"{summary['ir_version']}, producer {summary['producer'] or '?'}, {summary['parameters']:,} parameters, "
              f"{summary['nodes']} nodes")))
    t = Table(title="inputs")
    for col in ("name", "shape", "dtype", "layout", "range"):
        t.add_column(col)
    for i in summary["inputs"]:
        shown = SimpleNamespace(value_range=i["range"], range_guessed=i.get("range_guessed", False))
        t.add_row(_shown(i["name"]), _shown(_fmt_shape(i["shape"])), i["dtype"], _shown(i["layout"] or "-"),
                  Text(_fmt_range(shown)))
    con.print(t)
    t = Table(title="outputs")
    for col in ("name", "shape", "dtype"):
        t.add_column(col)
    for o in summary["outputs"]:
        t.add_row(_shown(o["name"]), _shown(_fmt_shape(o["shape"])), o["dtype"] or "?")
    con.print(t)
    con.print("ops: " + ", ".join(f"{op} x{n}" for op, n in summary["ops"].items()))
    for k, v in summary["metadata"].items():
        con.print(f"metadata {k} = {v}", markup=False)


@command()
def convert(
    src: Annotated[str, typer.Argument(help="Framework model (e.g. a .keras file).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the ONNX model.")],
    input_shape: Annotated[str | None, typer.Option("--input-shape", help="Full input shape, batch first, e.g. "
                                                    "1,28,28,1 (';' between several inputs).")] = None,
    opset: Annotated[int | None, typer.Option("--opset", help="Target ONNX opset.")] = None,
    input_range: Annotated[str | None, typer.Option("--input-range", help="The value range the model was trained on, "
                                                    "e.g. 0,1 / -1,1 / 0,255 (stored in the metadata; default: "
                                                    "guessed, and marked so).")] = None,
    layout: Annotated[str | None, typer.Option("--layout", help="Image layout of the input: NHWC | NCHW (default: the "
                                                                "source framework's).")] = None,
    class_names: ClassNames = None,
) -> None:
    """Convert a framework model to ONNX and check parity against the source."""
    from converters import to_onnx

    from .graph import input_info, read_class_names, tensor_shape

    shapes = _parse_shapes(input_shape)
    extra: dict[str, Any] = {}
    if input_range is not None:
        extra["input_range"] = _parse_range(input_range)
    if layout is not None:
        if layout.strip().upper() not in ("NHWC", "NCHW"):
            raise OnnxvizError(f"bad --layout {layout!r}: choose NHWC or NCHW")
        extra["input_layout"] = layout.strip().upper()
    if class_names is not None:
        extra["class_names"] = read_class_names(class_names)
    result = to_onnx(src, output=output, input_shape=shapes[0] if shapes and len(shapes) == 1 else shapes,
                     opset=opset, **extra)
    con = _console()
    con.print(f"format: {result.format}", markup=False)
    if result.max_abs_diff is None:
        con.print("parity: not checked", markup=False)
    else:
        con.print(f"parity: max abs diff {result.max_abs_diff:.3g}, max rel diff {result.max_rel_diff:.3g}",
                  markup=False)
    for i in input_info(result.model):
        con.print(f"input  {i.name} {_fmt_shape(i.shape)} {i.dtype} layout={i.layout or '-'} "
                  f"range={_fmt_range(i)}", markup=False)
    for o in result.model.graph.output:
        con.print(f"output {o.name} {_fmt_shape(tensor_shape(result.model, o.name))}", markup=False)
    names = _model_class_names(result.model)
    if names:
        con.print(f"classes: {', '.join(names)}", markup=False)
    con.print(f"wrote {output}", markup=False)


def _fmt_range(info: Any) -> str:
    """``[0, 1]``, and ``[0, 1] (guessed; set with --input-range)`` when nobody said."""
    lo, hi = info.value_range
    text = f"[{lo:g}, {hi:g}]"
    return text + " (guessed; set with --input-range)" if getattr(info, "range_guessed", False) else text


def _model_class_names(model: Any) -> list[str] | None:
    from .graph import class_names

    try:
        return class_names(model)
    except OnnxvizError:
        return None


@command()
def grad(
    model: ModelFile,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the gradient model.")],
    layer: TargetLayer = None,
    modifier: Annotated[str | None, typer.Option("--modifier", help="guided | deconvnet (ReLU family).")] = None,
) -> None:
    """Save the gradient model: inputs + cotangent -> target, d(cotangent . target)/d input."""
    from .autodiff import gradient_model
    from .fileio import check_outputs, save_model
    from .graph import load_model

    check_outputs([output])
    loaded = _logits_unless_layer(load_model(model), layer)
    g = gradient_model(loaded, of=layer, modifier=modifier)
    written = save_model(g, output)
    con = _console()
    con.print(f"inputs:  {', '.join(i.name for i in g.graph.input if i.name not in _init_names(g))}", markup=False)
    con.print(f"outputs: {', '.join(o.name for o in g.graph.output)}", markup=False)
    con.print(f"wrote {written} ({len(g.graph.node)} nodes)", markup=False)


def _logits_unless_layer(model, layer: str | None):
    """With no --layer the target is the logits of the first output (softmax etc. stripped)."""
    from .errors import RewriteError
    from .rewrite import to_logits

    if layer is not None:
        return model
    try:
        return to_logits(model)
    except RewriteError:
        return model


def _init_names(model) -> set[str]:
    return {t.name for t in model.graph.initializer}


@command()
def check(
    model: ModelFile,
    layer: TargetLayer = None,
    input_shape: InputShape = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random input and directions.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check the gradient against float64 finite differences. Exit 0 pass, 1 mismatch, 2 bad input."""
    import warnings

    from .check import check_gradients
    from .gradients import FallbackWarning
    from .graph import load_model

    shapes = _parse_shapes(input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)  # reported below as method "fd"
        report = check_gradients(load_model(model), layer,
                                 input_shape=shapes[0] if shapes else None, seed=seed)
    if as_json:
        data = report.to_dict()
        _echo_json({k: data[k] for k in ("supported", "unsupported_ops", "max_rel_error", "method", "target",
                                          "ops_with_rules", "tolerance", "passed", "input_shape")})
    else:
        con = _console()
        con.print(f"target: {report.target}   input shape: {tuple(report.input_shape)}", markup=False)
        con.print(f"ops with rules: {', '.join(report.ops_with_rules) or '-'}", markup=False)
        if report.unsupported_ops:
            for op, nodes in report.unsupported_nodes.items():
                con.print(f"no rule: {op} ({', '.join(nodes[:5])})", markup=False)
        con.print(f"method: {report.method}   max relative error vs float64 finite differences: "
                  f"{report.max_rel_error:.2e} (tolerance {report.tolerance:g})", markup=False)
        con.print("PASS" if report.passed else "FAIL", markup=False)
    if not report.passed:
        raise typer.Exit(1)


def _check_outputs(picture: Path | None = None, gif: Path | None = None, npy: Path | None = None) -> None:
    """Refuse bad destinations before the work: a suffix that names no format we write, two outputs
    naming one file, a directory or a device (see :func:`onnxviz.fileio.check_outputs`)."""
    from .fileio import check_outputs, check_suffix
    from .render import picture_format

    check_outputs([picture, gif, npy])
    if picture is not None:
        picture_format(picture)
    if gif is not None:
        check_suffix(gif, (".gif",), "GIF")
    if npy is not None:
        check_suffix(npy, (".npy",), "array")


def _parse_range(text: str | None) -> tuple[float, float] | None:
    """``0,1`` / ``-1,1`` / ``0,255`` -> (lo, hi): two finite numbers, lo < hi."""
    if text is None:
        return None
    from .graph import check_value_range

    parts = text.replace(" ", "").strip("()[]").split(",")
    if len(parts) != 2:
        raise OnnxvizError(f"bad --input-range {text!r}: expected two numbers like 0,1 or -1,1")
    return check_value_range(parts, f"--input-range {text!r}")


@command()
def maximize(
    model: ModelFile,
    layer: Annotated[str | None, typer.Option("--layer", "-l", help=f"Layer: {_LAYER_HELP} (default: the output layer, "
                                                                    "as logits).")] = None,
    units: Annotated[str, typer.Option("--units", "-u", help="Units/channels: 3, 0-9, 1,4,7-9 or all.")] = "all",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="PNG grid of the images.")] = None,
    steps: Steps = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives the same images.")] = 0,
    lr: Annotated[float | None, typer.Option("--lr", help="Adam learning rate (default: by input kind).")] = None,
    param: Annotated[str | None, typer.Option("--param", help="Image parameterization: pixel | fft.")] = None,
    class_objective: Annotated[str | None, typer.Option("--class-objective", help="Softmax layers: logit | log-softmax "
                                                        "(default: by input kind).")] = None,
    gif: Annotated[Path | None, typer.Option("--gif", help="Also write a GIF of the optimization.")] = None,
    save_npy: Annotated[Path | None, typer.Option("--save-npy", help="Also write the raw images (units, *input shape), "
                                                  "model layout and range.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON record instead of text.")] = False,
    gradient: Gradient = "auto",
    providers: Providers = "auto",
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Images per onnxruntime run (default: "
                                                                        "auto).")] = None,
    input_range: InputRange = None,
    input_shape: InputShape = None,
    prior: Annotated[str, typer.Option("--prior", help="Image prior: a .npz from 'onnxviz prior fit', auto "
                                       "(MODEL.prior.npz beside the model, if any) or none.")] = "auto",
    prior_weight: Annotated[float | None, typer.Option("--prior-weight", help="Weight of the prior's penalty, relative "
                                                       "(default 1; 0.05 with --from).")] = None,
    start: Annotated[str | None, typer.Option("--from", help="Feature accentuation: start from this image "
                                              "(PNG/JPEG/NPY) and change it as little as possible so the units "
                                              "rise.")] = None,
    sanity: Annotated[bool, typer.Option("--sanity", help="Then run the same recipe on copies re-drawn from the top "
                                         "weight layer down and report whether the pictures come from the model (exit "
                                         "1 on FAIL).")] = False,
    class_names: ClassNames = None,
) -> None:
    """Activation maximization: images that drive units of a layer (class logits by default)."""
    from .maximize import Maximizer, default_settings, parse_units
    from .render import save_result

    if output is None and gif is None and save_npy is None and not as_json:
        raise OnnxvizError("nothing to write: give -o PNG, --gif, --save-npy or --json")
    if param is not None and param not in ("pixel", "fft"):
        raise OnnxvizError(f"unknown --param {param!r} (choose pixel or fft)")
    if class_objective is not None:
        class_objective = class_objective.replace("-", "_")
    _check_outputs(picture=output, gif=gif, npy=save_npy)
    if prior_weight is not None and not (prior_weight >= 0 and prior_weight < float("inf")):
        raise OnnxvizError(f"bad --prior-weight {prior_weight}: expected a finite number >= 0")
    if sanity and start is not None:
        raise OnnxvizError("--sanity checks activation maximization from scratch; it does not apply to --from")
    shapes = _parse_shapes(input_shape)
    engine = Maximizer(model, gradient=gradient, providers=providers, input_range=_parse_range(input_range),
                       input_shape=shapes[0] if shapes else None, class_names=class_names)
    key = layer
    unit_list = parse_units(units, engine.layer_size(key))
    start_image = None
    if start is not None:
        from .images import load_images, model_input

        loaded = load_images([start], model_input(engine.model, engine.input.name, engine.input.shape,
                                                  engine.input.value_range))
        if len(loaded) != 1:
            raise OnnxvizError(f"--from takes one image; {start} holds {len(loaded)}")
        start_image = loaded.batch[0]
    total = steps or default_settings(engine.input.channels, engine.input.h, engine.input.w).steps
    with _progress("maximizing", unit="steps", quiet=as_json) as update:
        result = engine.run(key, unit_list, steps=steps, lr=lr, seed=seed, param=param, batch_size=batch_size,
                            class_objective=class_objective, record_every=max(1, total // 40) if gif is not None else 0,
                            prior=prior, prior_weight=prior_weight, start=start_image, callbacks=() if update is None
                            else (lambda info: update(completed=info.chunk * info.steps + info.step,
                                                      total=info.steps * info.chunks),))
    written = save_result(result, png=output, gif=gif, npy=save_npy, start=start_image)
    check = None
    if sanity:
        from .fvsanity import visualization_sanity

        check = visualization_sanity(model, key, unit_list, prior=prior, seed=seed, steps=steps, lr=lr, param=param,
                                     batch_size=batch_size, class_objective=class_objective, prior_weight=prior_weight,
                                     gradient=gradient, providers=providers, input_range=_parse_range(input_range),
                                     input_shape=shapes[0] if shapes else None)
    if as_json:
        _echo_json({"model": str(model), "written": [str(p) for p in written], **result.to_dict(),
                    **({"sanity": check.to_dict()} if check is not None else {})})
        if check is not None and check.verdict == "FAIL":
            raise typer.Exit(1)
        return
    con = _console()
    tensors = ", ".join(f"{k} (tensor {v})" for k, v in result.settings["tensors"].items())
    used = result.settings.get("prior")
    con.print(f"{len(result.labels)} images of {tensors}, {result.settings['steps']} steps, "
              f"{result.seconds:.1f} s" + (f", {used['kind']} prior" if used else ", no prior"),
              markup=False, soft_wrap=True)
    moved = result.settings.get("accentuation")
    for i, (label, value) in enumerate(zip(result.labels, result.values)):
        extra = ""
        if moved:
            extra = f", moved pixel RMS {moved['pixel_rms'][i]:.3f}" + (
                f", prior distance {moved['prior_distance'][i]:.3f}" if "prior_distance" in moved else "")
        con.print(f"  {label}: objective {value:.4g}{extra}", markup=False, soft_wrap=True)
    for path in written:
        con.print(f"wrote {path}", markup=False, soft_wrap=True)
    for line in check.lines() if check is not None else ():
        con.print(line, markup=False, soft_wrap=True)
    if check is not None and check.verdict == "FAIL":
        raise typer.Exit(1)


# ----------------------------------------------------------------------------------- priors
prior_app = typer.Typer(cls=OnnxvizGroup, no_args_is_help=True, add_completion=False,
                        help="Image priors fitted from sample images (make visualizations readable).")
app.add_typer(prior_app, name="prior")


@prior_app.command("fit")
def prior_fit(
    images: Annotated[list[str], typer.Argument(help="Sample images: folders, PNG/JPEG files or .npy arrays.")],
    model: Annotated[str, typer.Option("--model", "-m", help="The ONNX model the prior is for.")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Where to write the prior (default: "
                                                "MODEL.prior.npz beside the model, where maximize finds it).")] = None,
    kind: Annotated[str, typer.Option("--kind", help="auto | gaussian (small inputs) | fourier (large RGB).")] = "auto",
    components: Annotated[int | None, typer.Option("--components", "-k", help="Gaussian prior: principal directions "
                                                   "kept (default: by --variance).")] = None,
    variance: Annotated[float, typer.Option("--variance", help="Gaussian prior: explained variance to keep.")] = 0.9,
    input_range: InputRange = None,
) -> None:
    """Fit an image prior from sample images, for `onnxviz maximize --prior`."""
    from .graph import load_model
    from .images import model_input
    from .priors import fit_prior, prior_path_for, sample_images, save_prior

    if components is not None and components < 1:
        raise OnnxvizError("--components must be at least 1")
    if not 0 < variance <= 1:
        raise OnnxvizError(f"bad --variance {variance}: expected a fraction in (0, 1]")
    proto = load_model(model)
    spec = model_input(proto, value_range=_parse_range(input_range), allow_flat=True)
    samples = sample_images(images, spec)
    prior = fit_prior(samples, kind=kind, components=components, variance=variance, model=proto)
    target = output if output is not None else prior_path_for(model)
    save_prior(prior, target)
    con = _console()
    info = prior.describe()
    what = (f"{info['components']} components, {info['explained_variance']:.1%} of the variance"
            if prior.kind == "gaussian" else "mean amplitude spectrum")
    con.print(f"{prior.kind} prior from {len(samples)} images ({what})", markup=False, soft_wrap=True)
    con.print(f"wrote {target}", markup=False, soft_wrap=True)


# ----------------------------------------------------------------------------------- attribution
def _attribution_command(family: str, methods: str, save_npy: Path | None, common: dict[str, Any],
                         **options: Any) -> None:
    """Shared by ``saliency`` / ``cam`` / ``occlusion``: read, attribute, print, then write.
    ``common``: the values of the arguments and options :func:`_attribution_options` adds."""
    import numpy as np

    from .attribution import CAM_METHODS, SALIENCY_METHODS, explain_files, method_name

    allowed = {"saliency": SALIENCY_METHODS, "cam": CAM_METHODS, "occlusion": ("occlusion",)}[family]
    names = [method_name(m) for m in methods.split(",") if m.strip()]
    if not names:
        raise OnnxvizError("no --method given")
    for name in names:
        if name not in allowed:
            other = next((f for f, ms in (("saliency", SALIENCY_METHODS), ("cam", CAM_METHODS)) if name in ms),
                         "occlusion")
            raise OnnxvizError(f"{name!r} is not a {family} method (use `onnxviz {other}`); "
                               f"choose: {', '.join(allowed)}")
    output, unit, cmap, alpha, seed = (common[k] for k in ("output", "unit", "cmap", "alpha", "seed"))
    _check_outputs(picture=output, npy=save_npy)
    from .render import check_alpha, colormap

    colormap(cmap)  # both refused now, not after the work
    check_alpha(alpha)
    shapes = _parse_shapes(common["input_shape"])
    unit_key: Any = unit
    if unit is not None and "," in unit:
        unit_key = [u for u in unit.split(",") if u.strip()]
    att_options = {"input_shape": shapes[0] if shapes else None, "value_range": _parse_range(common["input_range"]),
                   "providers": common["providers"], "batch_size": common["batch_size"],
                   "gradient": common.get("gradient", "auto")}
    result = explain_files(common["model"], common["images"], names, unit_key, metrics=common["metrics"],
                           sanity=common["sanity"], seed=seed, class_names=common["class_names"],
                           attributor_options=att_options, **options)
    att = result.attributor
    for note in result.images.notes:
        _say(note)
    first = result.results[0]
    probs = att.probabilities_from_logits(att.logits(result.images.batch))
    for i, label in enumerate(result.images.labels):
        top = int(first.predicted[i])
        _say(f"{label}: top class {att.unit_label(top)} (p={probs[i, top]:.3f}); explaining "
                  f"{att.unit_label(int(first.units[i]))} (logit {first.scores[i]:.3f})")
    for r in result.results:
        parts = []
        if "layer" in r.info:
            parts.append(f"layer {r.info['node']} -> {r.info['layer']} {r.info['layout']} "
                         f"{_fmt_shape(r.info['feature_shape'])}")
        if "completeness_error" in r.info:
            parts.append(f"completeness error max {np.max(r.info['completeness_error']):.2%} "
                         f"({r.info['steps']} steps)")
        if "forward_passes" in r.info:
            parts.append(f"{r.info['forward_passes']} forward passes")
        if "windows" in r.info:
            parts.append(f"window {r.info['window']}, stride {r.info['stride']}, {r.info['windows']} windows")
        _say(f"{r.method}: " + ("; ".join(parts) if parts else "done"))
    if result.metrics:
        _say("metrics (mean over images): deletion AUC (lower is better), insertion AUC (higher is better)")
        for name, values in result.metrics.items():
            _say(f"  {name:<16} deletion {values['deletion'].mean():.4f}  insertion "
                      f"{values['insertion'].mean():.4f}")
    for name, check in result.sanity.items():
        rows = ", ".join(f"{layer} {corr:.3f}" for layer, corr in check.rows())
        kind = f" ({check.info['modifier']} maps)" if check.signed is not None else ""
        _say(f"sanity {name}{kind}: Spearman vs original after randomizing from the top: {rows}")
        if check.signed is not None:
            rows = ", ".join(f"{layer} {corr:.3f}" for layer, corr in check.rows(signed=True))
            _say(f"sanity {name} (signed maps): {rows}")
    written = result.save(output, save_npy, cmap=cmap, alpha=alpha)
    for path in written:
        extra = ""
        if path.suffix == ".npy":
            extra = f" {_fmt_shape(result.maps().shape)}" + (" (methods, images, H, W)" if len(names) > 1 else "")
        _say(f"wrote {path}{extra}")


def _say(text: str) -> None:
    """One plain line on stdout (no wrapping, no markup, control characters written out)."""
    typer.echo(_printable(text))


def _attribution_options(seed: str, gradient: Any = Gradient) -> Callable:
    """Decorator: the arguments and options ``saliency``, ``cam`` and ``occlusion`` share (``--seed``
    with the help given, ``--gradient`` as given, none where that is None), the first four before the
    command's own parameters and the rest after; the command gets their values as one dict, ``common``."""
    required = inspect.Parameter.empty
    head = [("model", ModelFile, required), ("images", Images, required), ("output", Figure, required),
            ("unit", Unit, None)]
    tail = [("metrics", Metrics, False), ("sanity", Sanity, False),
            ("seed", Annotated[int, typer.Option("--seed", help=seed)], 0), ("cmap", Cmap, "jet"),
            ("alpha", Alpha, 0.5), *([("gradient", gradient, "auto")] if gradient is not None else []),
            ("providers", Providers, "auto"), ("batch_size", BatchSize, None), ("input_range", InputRange, None),
            ("input_shape", InputShape, None), ("class_names", ClassNames, None)]

    def decorate(func: Callable) -> Callable:
        own = [(p.name, p.annotation, p.default) for p in inspect.signature(func, eval_str=True).parameters.values()
               if p.name != "common"]
        params = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=kind, default=default)
                  for name, kind, default in head + own + tail]

        def run(**values: Any) -> None:
            common = {name: values.pop(name) for name, _, _ in head + tail}
            func(**values, common=common)

        run.__name__, run.__qualname__, run.__doc__ = func.__name__, func.__qualname__, func.__doc__
        run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return decorate


@command()
@_attribution_options(seed="Seed of the SmoothGrad noise and the metrics.")
def saliency(
    method: Annotated[str, typer.Option("--method", "-m", help="vanilla | smoothgrad | gradxinput | ig | guided | "
                                        "deconvnet (also smoothgrad-squared, vargrad); comma-separate several to "
                                        "compare.")] = "vanilla",
    save_npy: SaveMaps = None,
    modifier: Annotated[str, typer.Option("--modifier", help="abs | relu | negate | none (signed).")] = "abs",
    samples: Annotated[int, typer.Option("--samples", help="SmoothGrad: noisy samples per image.")] = 25,
    noise: Annotated[float, typer.Option("--noise", help="SmoothGrad: noise sigma as a fraction of the input "
                                                         "range.")] = 0.15,
    steps: Annotated[int, typer.Option("--steps", help="Integrated gradients: steps.")] = 64,
    baseline: Annotated[str, typer.Option("--baseline", help="Integrated gradients: black | white | zero | a "
                                                             "number.")] = "black",
    *, common: dict[str, Any],
) -> None:
    """Saliency maps from input gradients (vanilla, SmoothGrad, gradient x input, IG, guided, deconvnet)."""
    mod = None if modifier.strip().lower() in ("none", "signed", "") else modifier.strip().lower()
    _attribution_command("saliency", method, save_npy, common, modifier=mod, samples=samples, noise=noise,
                         steps=steps, baseline=baseline)


@command()
@_attribution_options(seed="Seed of the metrics' tie-breaking.", gradient=Annotated[str, typer.Option(
    "--gradient", help="auto | graph | fd (guided Grad-CAM needs graph).")])
def cam(
    method: Annotated[str, typer.Option("--method", "-m", help="gradcam | gradcam++ | layercam | scorecam (also "
                                        "guided-gradcam); comma-separate several to compare.")] = "gradcam",
    layer: Annotated[str | None, typer.Option("--layer", "-l", help=f"Feature map: {_LAYER_HELP} (default: the last "
                                              "spatial map before global pooling / flatten).")] = None,
    save_npy: SaveMaps = None,
    top_n: Annotated[int | None, typer.Option("--top-n", help="Score-CAM: use only the N channels of largest "
                                                              "variance.")] = None,
    *, common: dict[str, Any],
) -> None:
    """Class activation maps (Grad-CAM, Grad-CAM++, LayerCAM, Score-CAM) on a feature map."""
    _attribution_command("cam", method, save_npy, common, layer=layer, top_n=top_n)


@command()
@_attribution_options(seed="Seed of the metrics' tie-breaking.", gradient=None)
def occlusion(
    save_npy: SaveMaps = None,
    window: Annotated[int | None, typer.Option("--window", help="Occluding square's side in pixels (default: ~1/7 of "
                                                                "the image).")] = None,
    stride: Annotated[int | None, typer.Option("--stride", help="Step between windows (default: half the window).")] = None,
    fill: Annotated[str, typer.Option("--fill", help="black | white | zero | mean | a number (model units).")] = "black",
    score: Annotated[str, typer.Option("--score", help="logit | probability of the unit.")] = "logit",
    *, common: dict[str, Any],
) -> None:
    """Occlusion sensitivity: the drop of the class score when a sliding window is covered."""
    fill_value: Any = fill
    try:
        fill_value = float(fill)
    except ValueError:
        pass
    _attribution_command("occlusion", "occlusion", save_npy, common, window=window, stride=stride, fill=fill_value,
                         score=score)


def demo(out: Path | None = None, console: Any = None) -> dict[str, Any]:
    """On the shipped MNIST model: the 10 class visualizations with the model's digits prior
    (``classes.png``, ``classes.gif``), the same without a prior (``classes_no_prior.png``), both
    side by side (``compare.png``), and the first conv layer's filters (``filters.png``), written
    into ``out`` (default ``./onnxviz-demo``). Returns what it did, as data."""
    import numpy as np

    from .graph import input_info, load_model
    from .maximize import Maximizer, first_conv_layer
    from .rewrite import final_activation, to_logits
    from .render import save_result
    from .runtime import make_session
    from .priors import prior_path_for
    from .shipped import shipped_model_path

    con = console or _console()
    folder = Path(out) if out is not None else Path("onnxviz-demo")
    path = shipped_model_path()
    model = load_model(path)
    con.print(f"[bold]shipped model[/] {path}", soft_wrap=True, markup=True)
    act = final_activation(model)
    if act is not None:
        con.print(f"to_logits: stripped {act.op_type} node {act.node!r}; class images maximize the logits "
                  f"{act.pre_activation!r}", markup=False, soft_wrap=True)
    from .render import grid_image, save_png

    engine = Maximizer(path)
    session = make_session(model)
    inp = input_info(model)[0]

    def verdict(images: np.ndarray) -> np.ndarray:
        probs = session.run(None, {inp.name: images})[0]
        return probs[np.arange(len(probs)), np.arange(len(probs))] if probs.shape[1] == len(probs) \
            else probs.max(axis=1)

    classes = engine.run(None, "all", seed=0, record_every=6)  # with the prior beside the model, if any
    plain = engine.run(None, "all", seed=0, prior=None)
    own, own_plain = verdict(classes.images), verdict(plain.images)
    written = save_result(classes, png=folder / "classes.png", gif=folder / "classes.gif")
    written += save_result(plain, png=folder / "classes_no_prior.png")
    with_prior = classes.settings.get("prior") is not None
    rows = [("with the digits prior" if with_prior else "no prior found", classes), ("without a prior", plain)]
    pictures = [grid_image(r.images, r.labels, layout=r.layout, value_range=r.value_range, cols=10, title=t)
                for t, r in rows]
    written.append(save_png(folder / "compare.png", _stack_pictures(pictures)))
    con.print(f"classes: {len(classes.labels)} images in {classes.seconds:.1f} s "
              f"({'with the prior ' + str(prior_path_for(path)) if with_prior else 'no prior'}); the model's own "
              f"verdict (probability of the target class): min {own.min():.3f}", markup=False, soft_wrap=True)
    con.print(f"without a prior: min {own_plain.min():.3f}", markup=False, soft_wrap=True)
    result: dict[str, Any] = {"model": str(path), "stripped": act, "classes": classes, "no_prior": plain,
                              "class_probabilities": own, "class_probabilities_no_prior": own_plain}
    conv = first_conv_layer(model)
    if conv is not None:
        filters = engine.run(conv, "all", seed=0, prior=None)  # free pixels show a filter's own pattern
        written += save_result(filters, png=folder / "filters.png")
        con.print(f"filters: {len(filters.labels)} channels of {conv!r} in {filters.seconds:.1f} s", markup=False, soft_wrap=True)
        result["filters"] = filters
    for p in written:
        con.print(f"wrote {p}", markup=False, soft_wrap=True)
    result["written"] = written
    # kept from the first demo: probabilities vs logits of a blank image
    shape = [1, *classes.images.shape[1:]]
    blank = np.full(shape, inp.value_range[0], dtype=np.float32)
    result["probabilities"] = make_session(model).run(None, {inp.name: blank})[0][0]
    if act is not None:
        result["logits"] = make_session(to_logits(model)).run(None, {inp.name: blank})[0][0]
    return result


def _stack_pictures(pictures: list) -> Any:
    """Pillow images one above the other on the grid background."""
    from PIL import Image

    width = max(p.width for p in pictures)
    canvas = Image.new("RGB", (width, sum(p.height for p in pictures)), pictures[0].getpixel((0, 0)))
    y = 0
    for p in pictures:
        canvas.paste(p, (0, y))
        y += p.height
    return canvas


@command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", help="Folder to write results into.")] = Path("onnxviz-demo"),
) -> None:
    """Visualize the shipped MNIST model: class images, first-layer filters, a GIF."""
    demo(out)


def _command_text(*args: Any) -> str:
    """The command that reproduces a run, every setting spelled out (for reports and records)."""
    import shlex

    return " ".join(["onnxviz"] + [shlex.quote(str(a)) for a in args])


@command()
def report(
    model: ModelFile,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the HTML page.")],
    layers: Annotated[str, typer.Option("--layers", help="Comma-separated layers to visualize, or auto.")] = "auto",
    units_per_layer: Annotated[int, typer.Option("--units-per-layer", help="Channels shown per layer.")] = 8,
    classes: Annotated[int, typer.Option("--classes", help="Class pictures shown at most (spread over the "
                                                           "classes).")] = 10,
    images: Annotated[list[str] | None, typer.Option("--images", help="Images to explain (PNG/JPEG/NPY); "
                                                     "repeatable.")] = None,
    steps: Steps = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    providers: Providers = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report record as JSON.")] = False,
    class_names: ClassNames = None,
    prior: Annotated[str, typer.Option("--prior", help="Image prior for the class pictures: a .npz, auto "
                                                       "(MODEL.prior.npz) or none.")] = "auto",
) -> None:
    """One self-contained HTML page: summary, layers, channel and class visualizations, attribution."""
    import warnings

    from .gradients import FallbackWarning
    from .report import write_report

    if units_per_layer < 1 or classes < 1:
        raise OnnxvizError("--units-per-layer and --classes must be at least 1")
    chosen = "auto" if layers.strip() == "auto" else [l.strip() for l in layers.split(",") if l.strip()]
    options = dict(layers=chosen, units_per_layer=units_per_layer, images=images, steps=steps, seed=seed,
                   providers=providers, prior=prior, classes=classes,
                   command=_command_text("report", model, "-o", output, "--layers", layers, "--units-per-layer",
                                         units_per_layer, "--classes", classes, *[a for i in images or [] for a in ("--images", i)],
                                         *(("--steps", steps) if steps is not None else ()), "--seed", seed,
                                         "--providers", providers, "--prior", prior,
                                         *(("--class-names", class_names) if class_names is not None else ())))
    if class_names is not None:
        options["class_names"] = class_names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)  # the page itself says when fd is used
        with _progress("report", quiet=as_json) as update:
            record = write_report(model, output, **options, progress=None if update is None else (
                lambda what, done, total: update(description=f"report: {what}", completed=done, total=total)))
    if as_json:
        from dataclasses import asdict

        _echo_json({"written": str(output), **asdict(record)})
        return
    con = _console()
    if record.unsupported_ops:
        con.print(f"no gradient rule for {', '.join(record.unsupported_ops)}: used finite differences", markup=False)
    con.print(f"wrote {output} ({len(record.layers)} layers, {record.seconds:.1f} s)", markup=False)


def main() -> None:
    """Console-script entry point. Ctrl-C and SIGTERM both arrive as KeyboardInterrupt, so a
    command's temp files are removed on the way out and it ends with one line (exit 130 / 143)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # replaces onnxviz/__init__'s start-up one
    signal.signal(signal.SIGTERM, _on_sigterm)
    app(prog_name="onnxviz")


if __name__ == "__main__":
    main()

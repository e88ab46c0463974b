"""The ``onnxviz`` command line. Thin: every command parses, calls the library, prints.

Adding a command is one function decorated with ``@app.command()`` (alias ``command``): the app's
group class turns any :class:`~onnxviz.errors.OnnxvizError` raised by any command into one
``error: <message>`` line on stderr and exit code 2; other exceptions keep their traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import click
import typer
from typer.core import TyperGroup

from .errors import OnnxvizError

__all__ = ["app", "command", "main", "demo", "EXIT_USER_ERROR"]

EXIT_USER_ERROR = 2


def report_user_error(error: OnnxvizError) -> None:
    """Print ``error: <message>`` as one line on stderr."""
    message = " ".join(str(error).split()) or type(error).__name__
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


class OnnxvizGroup(TyperGroup):
    """Runs subcommands so that user errors end as one line and exit code 2, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OnnxvizError as e:
            report_user_error(e)
            raise typer.Exit(EXIT_USER_ERROR) from None


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
        from . import __version__

        typer.echo(f"onnxviz {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Show the version and exit.",
                                 callback=_version_callback, is_eager=True),
) -> None:
    """See what a trained neural network has learned — for any ONNX model, on onnxruntime alone."""


# ----------------------------------------------------------------------------------- helpers
def _console():
    from rich.console import Console

    return Console(soft_wrap=False)


def _fmt_shape(shape: Any) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _layers_table(layers: list, title: str | None = None):
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("name", overflow="fold")
    table.add_column("op")
    table.add_column("outputs", overflow="fold")
    table.add_column("shape")
    for layer in layers:
        table.add_row(str(layer.index), layer.name or "", layer.op_type, ", ".join(layer.outputs),
                      "; ".join(_fmt_shape(s) for s in layer.shapes))
    return table


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


# ----------------------------------------------------------------------------------- commands
@command()
def layers(
    model: str = typer.Argument(..., help="ONNX model file."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
    layer: Optional[str] = typer.Option(None, "--layer", "-l",
                                        help="Show only the layer this name/index/tensor resolves to."),
) -> None:
    """List the layers (nodes) with their output tensors and shapes."""
    from .graph import find_layer, layer_table, load_model

    loaded = load_model(model)
    rows = [find_layer(loaded, layer)] if layer is not None else layer_table(loaded)
    if as_json:
        _echo_json([row.to_dict() for row in rows])
    else:
        _console().print(_layers_table(rows, title=str(model)))


@command()
def info(
    model: str = typer.Argument(..., help="ONNX model file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Inputs (shape, layout, value range), outputs, opset, producer, parameters, ops, metadata."""
    from .graph import load_model, model_summary

    summary = model_summary(load_model(model))
    summary = {"file": str(model), **summary}
    if as_json:
        _echo_json(summary)
        return
    from rich.table import Table

    con = _console()
    con.print(f"[bold]{model}[/]  opset {summary['opset']}, IR {summary['ir_version']}, "
              f"producer {summary['producer'] or '?'}, {summary['parameters']:,} parameters, "
              f"{summary['nodes']} nodes")
    t = Table(title="inputs")
    for col in ("name", "shape", "dtype", "layout", "range"):
        t.add_column(col)
    for i in summary["inputs"]:
        t.add_row(i["name"], _fmt_shape(i["shape"]), i["dtype"], i["layout"] or "-",
                  f"[{i['range'][0]:g}, {i['range'][1]:g}]")
    con.print(t)
    t = Table(title="outputs")
    for col in ("name", "shape", "dtype"):
        t.add_column(col)
    for o in summary["outputs"]:
        t.add_row(o["name"], _fmt_shape(o["shape"]), o["dtype"] or "?")
    con.print(t)
    con.print("ops: " + ", ".join(f"{op} x{n}" for op, n in summary["ops"].items()))
    for k, v in summary["metadata"].items():
        con.print(f"metadata {k} = {v}", markup=False)


@command()
def convert(
    src: str = typer.Argument(..., help="Framework model (e.g. a .keras file)."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the ONNX model."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape",
                                              help="Full input shape, batch first, e.g. 1,28,28,1 "
                                                   "(';' between several inputs)."),
    opset: Optional[int] = typer.Option(None, "--opset", help="Target ONNX opset."),
) -> None:
    """Convert a framework model to ONNX and check parity against the source."""
    from converters import to_onnx

    from .graph import input_info, tensor_shape

    shapes = _parse_shapes(input_shape)
    result = to_onnx(src, output=output, input_shape=shapes[0] if shapes and len(shapes) == 1 else shapes,
                     opset=opset)
    con = _console()
    con.print(f"format: {result.format}", markup=False)
    if result.max_abs_diff is None:
        con.print("parity: not checked", markup=False)
    else:
        con.print(f"parity: max abs diff {result.max_abs_diff:.3g}, max rel diff {result.max_rel_diff:.3g}",
                  markup=False)
    for i in input_info(result.model):
        con.print(f"input  {i.name} {_fmt_shape(i.shape)} {i.dtype} layout={i.layout or '-'} "
                  f"range=[{i.value_range[0]:g}, {i.value_range[1]:g}]", markup=False)
    for o in result.model.graph.output:
        con.print(f"output {o.name} {_fmt_shape(tensor_shape(result.model, o.name))}", markup=False)
    con.print(f"wrote {output}", markup=False)


@command()
def grad(
    model: str = typer.Argument(..., help="ONNX model file."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the gradient model."),
    layer: Optional[str] = typer.Option(None, "--layer", "-l",
                                        help="Target: layer name, index or tensor (default: logits of the first output)."),
    modifier: Optional[str] = typer.Option(None, "--modifier", help="guided | deconvnet (ReLU family)."),
) -> None:
    """Save the gradient model: inputs + cotangent -> target, d(cotangent . target)/d input."""
    from .autodiff import gradient_model
    from .fileio import save_model
    from .graph import load_model

    loaded = _logits_unless_layer(load_model(model), layer)
    g = gradient_model(loaded, of=_layer_key(layer), modifier=modifier)
    written = save_model(g, output)
    con = _console()
    con.print(f"inputs:  {', '.join(i.name for i in g.graph.input if i.name not in _init_names(g))}", markup=False)
    con.print(f"outputs: {', '.join(o.name for o in g.graph.output)}", markup=False)
    con.print(f"wrote {written} ({len(g.graph.node)} nodes)", markup=False)


def _layer_key(layer: str | None) -> str | int | None:
    """CLI layer text -> find_layer key: integers (also negative) are indices."""
    if layer is None:
        return None
    try:
        return int(layer)
    except ValueError:
        return layer


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
    model: str = typer.Argument(..., help="ONNX model file."),
    layer: Optional[str] = typer.Option(None, "--layer", "-l",
                                        help="Target: layer name, index or tensor (default: logits of the first output)."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="Input shape for dynamic dims, e.g. 1,3,224,224."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random input and directions."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Check the gradient against float64 finite differences. Exit 0 pass, 1 mismatch, 2 bad input."""
    import warnings

    from .check import check_gradients
    from .gradients import FallbackWarning
    from .graph import load_model

    shapes = _parse_shapes(input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)  # reported below as method "fd"
        report = check_gradients(load_model(model), _layer_key(layer),
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


def demo(out: Path | None = None, console: Any = None) -> dict[str, Any]:
    """Inspect the shipped MNIST model and strip its softmax: layer table, the stripped node, and
    probabilities vs logits for a blank image. With ``out``, write the logits model there.
    Returns what it printed, as data."""
    import numpy as np

    from .fileio import save_model
    from .graph import input_info, layer_table, load_model
    from .rewrite import final_activation, to_logits
    from .runtime import make_session
    from .shipped import shipped_model_path

    con = console or _console()
    path = shipped_model_path()
    model = load_model(path)
    con.print(f"[bold]shipped model[/] {path}")
    con.print(_layers_table(layer_table(model), title="layers"))
    act = final_activation(model)
    logits_model = to_logits(model)
    inp = input_info(model)[0]
    shape = [d if isinstance(d, int) else 1 for d in (inp.shape or ())]
    blank = np.full(shape, inp.value_range[0], dtype=inp.dtype)
    probs = make_session(model).run(None, {inp.name: blank})[0][0]
    logits = make_session(logits_model).run(None, {inp.name: blank})[0][0]
    if act is not None:
        through = f" (through {', '.join(act.pass_through)})" if act.pass_through else ""
        con.print(f"to_logits: stripped {act.op_type} node {act.node!r}{through}; output "
                  f"{act.output!r} now carries its input {act.pre_activation!r}", markup=False)
    np.set_printoptions(precision=3, suppress=True)
    con.print(f"blank {inp.layout or ''} image {tuple(shape)}: probabilities {probs}", markup=False)
    con.print(f"blank {inp.layout or ''} image {tuple(shape)}: logits        {logits}", markup=False)
    result: dict[str, Any] = {"model": str(path), "stripped": act, "probabilities": probs, "logits": logits}
    if out is not None:
        written = save_model(logits_model, Path(out) / f"{path.stem}_logits.onnx")
        con.print(f"wrote {written}", markup=False)
        result["written"] = written
    return result


@command("demo")
def demo_command(
    out: Optional[Path] = typer.Option(None, "--out", help="Folder to write results into."),
) -> None:
    """Run the demo on the shipped MNIST model."""
    demo(out)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="onnxviz")


if __name__ == "__main__":
    main()

"""The normonnx command line: parses options, calls one library function, prints.

Every command returns its exit code; `NormonnxGroup.main` is the one place that turns exceptions
into codes and one-line messages (see normonnx.core.errors for the contract)."""
from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
import threading
import time
import traceback
import warnings

import click

from ..core.errors import ExitCode, Interrupted, NormonnxError, first_line
from ..core.spec import NormSpec
from ..core.tables import ALL_KINDS, DTYPES
from ..core.version import __version__
from ..exporting.export import DEFAULT_EXPORTER, DEFAULT_OPSET, DEFAULT_VARIANT, export_result
from .render import json_text


def _csv(ctx, param, value):
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _runtime_names(applies=None):
    """The callback of every --runtimes option: a comma list, where "all" means every ONNX runtime available
    here (normonnx.engine.runtimes.resolve_names; `applies` narrows it to the runtimes a command can use)."""
    def callback(ctx, param, value):
        names = _csv(ctx, param, value)
        if names and "all" in names:
            from ..engine.runtimes import resolve_names

            names = list(resolve_names(names, applies() if applies else None))
        return names
    return callback


def _bench_can_time():
    from ..engine.bench import can_time

    return can_time


def runtimes_options(help: str, default: str | None = None, applies=None):
    """--runtimes, the one name every command that runs models uses, and --providers, its old name on bench
    and sweep, kept hidden for one release (see _runtimes)."""
    def deco(f):
        f = click.option("--providers", "providers_alias", callback=_csv, default=None, hidden=True,
                         help="Deprecated: the old name of --runtimes.")(f)
        return click.option("--runtimes", callback=_runtime_names(applies), default=None, help=help + (
            f" [default: {default}]" if default else ""))(f)
    return deco


def _runtimes(runtimes, alias, default: str | None = None):
    """--runtimes, or the deprecated --providers with a note (both: exit 2)."""
    if alias and runtimes:
        raise click.UsageError("give --runtimes only (--providers is its deprecated old name), not both")
    if alias:
        click.echo("warning: --providers is deprecated and goes in the next release: use --runtimes (same names)",
                   err=True)
    return alias or runtimes or ([default] if default else None)


def spec_options(f):
    """The spec options every command shares, with the same meaning everywhere."""
    opts = [
        click.option("--norm", type=click.Choice(ALL_KINDS), default=None, help="bn, ln, in, gn or rms (default: ln)."),
        click.option("--channels", type=int, default=None, help="C for bn/in/gn; the normalized last dim for ln."),
        click.option("--normalized-shape", default=None, help="ln: several trailing dims, e.g. 16x64."),
        click.option("--groups", type=int, default=None, help="gn: number of groups (must divide C; default 4)."),
        click.option("--shape", default=None, help="Input shape, e.g. 2x8x16x16."),
        click.option("--eps", type=float, default=1e-5, show_default=True),
        click.option("--no-affine", is_flag=True, help="No learnable scale/shift."),
        click.option("--no-bias", is_flag=True, help="ln: scale but no shift (LayerNorm(bias=False))."),
        click.option("--track-running-stats/--no-track-running-stats", default=None,
                     help="in: normalize with running statistics (bn always does)."),
        click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32", show_default=True),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def export_options(f):
    from ..exporting.exporters import REGISTRY as EXPORTERS
    from ..exporting.variants import REGISTRY as VARIANTS

    opts = [
        click.option("--variant", type=click.Choice(list(VARIANTS)), default=DEFAULT_VARIANT, show_default=True),
        click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True),
        click.option("--exporter", type=click.Choice(list(EXPORTERS)), default=DEFAULT_EXPORTER, show_default=True),
        click.option("--dynamic", is_flag=True, help="Symbolic batch (and spatial/sequence) dims."),
        click.option("--allow-mismatch", is_flag=True,
                     help="Keep a model whose opset/op set differs from the request (reported, not refused)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


# -- options several commands take, each declared once (a command gives its own help where the option means
# something particular there) ------------------------------------------------------------------------------
def json_option(help: str = "Print a JSON document instead of text."):
    return click.option("--json", "as_json", is_flag=True, help=help)


def inputs_option(help: str = "Comma list of input suites (default: all that apply)."):
    return click.option("--inputs", callback=_csv, default=None, help=help)


def input_shape_option(example: str):
    """--input-shape for a model file's symbolic dims; `example`: one in the command's own terms."""
    return click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=DIMS",
                        help=f"Dims for a graph input with symbolic dims, e.g. {example} (repeatable).")


def runtime_option(help: str):
    """--runtimes on the commands that never had --providers (runtimes_options: with it)."""
    return click.option("--runtimes", callback=_runtime_names(), default=None, help=help)


def opt_level_option(help: str | None = None):
    return click.option("--opt-level", type=click.Choice(["all", "extended", "basic", "disabled"]), default="all",
                        show_default=True, help=help)


def allow_not_checked_option(f):
    """--allow-not-checked, the same on every command that judges: accept checks that could not run beside
    ones that passed (the verdict is then PASS, and the last line still counts them and says why)."""
    return click.option("--allow-not-checked", is_flag=True,
                        help="Pass (exit 0) when some checks could not run but every check that ran passed; the "
                             "summary still counts them (default: such partial coverage is NOT CHECKED, exit 4).")(f)


def make_spec(norm, channels, normalized_shape, groups, shape, eps, no_affine, no_bias, track_running_stats, dtype,
              default_norm: str | None = "ln") -> NormSpec | None:
    kind = norm or default_norm
    if kind is None:
        return None
    return NormSpec.make(kind, shape=shape, channels=channels, normalized_shape=normalized_shape, groups=groups,
                         eps=eps, affine=not no_affine, bias=not no_bias, track_running_stats=track_running_stats,
                         dtype=dtype)


def _spec_args(kw: dict) -> dict:
    keys = ("norm", "channels", "normalized_shape", "groups", "shape", "eps", "no_affine", "no_bias",
            "track_running_stats", "dtype")
    return {k: kw.pop(k) for k in keys}


class _Stopped(Exception):
    """A Ctrl-C or SIGTERM carried past click's own handling (which would print a blank line and "Aborted!")."""

    def __init__(self, interrupt: KeyboardInterrupt):
        super().__init__("interrupted")
        self.interrupt = interrupt


class NormonnxGroup(click.Group):
    """Runs a command and maps whatever happens to one exit code and at most one line on stderr."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            raise _Stopped(e) from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv[:1] or os.environ.get("NORMONNX_DEBUG") == "1"
        warnings.showwarning = _show_warning
        restore = _on_signals()
        try:
            rv = super().main(args=argv, prog_name=prog_name or "normonnx", complete_var=complete_var,
                              standalone_mode=False, **extra)
            code = int(rv) if isinstance(rv, int) else ExitCode.PASSED
        except NormonnxError as e:
            code = _fail(str(e), e.exit_code)
        except click.exceptions.Exit as e:  # --help, --version
            code = e.exit_code
        except (_Stopped, KeyboardInterrupt, click.exceptions.Abort) as e:
            # Ctrl-C or SIGTERM: cleaned up on the way here; one line, no traceback, 128 + the signal
            e = getattr(e, "interrupt", None) or e.__cause__ or e
            hint = getattr(e, "hint", None)
            code = _fail("interrupted" + (f": {hint}" if hint else ""), getattr(e, "exit_code", 130))
        except click.ClickException as e:
            code = _fail(f"{e.format_message()} (see 'normonnx {_command(argv)}--help')", ExitCode.BAD_INPUT)
        except OSError as e:  # a read-only folder, a full disk, a path that is not what it should be
            where = f"{e.filename}: " if e.filename else ""
            code = _fail(f"{where}{e.strerror or e}" + (" (free some space, or choose another folder)"
                                                        if e.errno == errno.ENOSPC else ""), ExitCode.BAD_INPUT)
        except MemoryError:
            code = _fail("out of memory: choose a smaller --shape", ExitCode.BAD_INPUT)
        except Exception as e:  # normonnx's own bug: never a verdict, never a bare traceback
            if debug:
                traceback.print_exc()
            missing = (getattr(e, "name", None) or "").split(".")[0] if isinstance(e, ModuleNotFoundError) else ""
            if missing in ("torch", "onnxscript"):
                # PyTorch reached on a path that did not ask errors.need_torch first: still one line, exit 3
                from ..core.errors import TORCH_INSTALL

                code = _fail(f"{_command(argv).strip() or 'this'} needs {missing}, which is not installed here: "
                             f"{TORCH_INSTALL}", ExitCode.UNAVAILABLE)
            else:
                text = first_line(e, 200) if str(e).strip() else ""
                code = _fail(f"internal error ({type(e).__name__}{': ' + text if text else ''}); please report it "
                             "with the command line" + ("" if debug else " and the traceback of 'normonnx --debug ...'"),
                             ExitCode.INTERNAL)
        finally:
            restore()
        if standalone_mode:
            sys.exit(int(code))
        return int(code)


_python_showwarning = warnings.showwarning
GRACE_S = 10.0  # after Ctrl-C or SIGTERM, cleanup that takes longer than this is cut short (never a hang)


def _on_signals():
    """SIGINT and SIGTERM raise Interrupted (a KeyboardInterrupt: every `finally` cleans up, the one place
    above prints one line, the exit code is 128 + the signal). A second signal while cleaning up is ignored
    (no traceback from inside a cleanup), and a watchdog ends the process after GRACE_S seconds if cleanup
    has not. Returns what undoes it. Only the main thread can set handlers: elsewhere, nothing is changed."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stopping = threading.Event()

    def handler(signum, frame):
        if stopping.is_set():
            return  # already on the way out
        stopping.set()
        timer = threading.Timer(GRACE_S, lambda: os._exit(128 + signum))
        timer.daemon = True
        timer.start()
        raise Interrupted(signum)

    for s in before:
        signal.signal(s, handler)

    def restore():
        for s, h in before.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)

    return restore


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """normonnx's own warnings as one line on stderr; everyone else's as Python shows them."""
    if category.__module__.startswith("normonnx"):
        click.echo(f"warning: {message}", err=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


@contextlib.contextmanager
def working(what: str, enabled: bool = True, after: float = 2.0):
    """A progress line on stderr for work that may take a while: nothing if it ends within `after`
    seconds; then '  .. WHAT' (on a terminal with the seconds counting, cleared at the end). It writes
    to its own copy of stderr's descriptor: the exporters' output is silenced meanwhile by pointing
    descriptor 2 elsewhere (exporters.quiet_export), which must not swallow this line."""
    if not enabled:
        yield
        return
    try:
        stream = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        stream = None  # in-process, a test runner's stderr: write through it
    tty = stream is not None and stream.isatty()
    if tty:  # one terminal line, so that \r redraws it (a wrapped line would not be cleared)
        import textwrap

        from .render import terminal_width

        what = textwrap.shorten(what, max(20, terminal_width() - 14), placeholder=" ...")
    done = threading.Event()

    def say(text: str) -> None:
        if stream is None:
            click.echo(text, err=True, nl=False)
        else:
            stream.write(text)
            stream.flush()

    def show():
        if done.wait(after):
            return
        t0 = time.monotonic() - after
        say(f"  .. {what}" + ("" if tty else "\n"))
        while tty and not done.wait(1.0):
            say(f"\r  .. {what} ({time.monotonic() - t0:.0f} s)")
        if tty:
            say("\r\033[K")

    thread = threading.Thread(target=show, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        if stream is not None:
            stream.close()


def _fail(message: str, code: int) -> int:
    click.echo(f"error: {message}", err=True)
    return int(code)


@click.group(cls=NormonnxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="normonnx")
@click.option("--debug", is_flag=True, help="Print the traceback of an internal error (or set NORMONNX_DEBUG=1).")
def cli(debug):
    """Export normalization layers from PyTorch to ONNX and check them on ONNX Runtime.

    Exit codes: 0 passed, 1 a check failed, 2 bad input, 3 runtime unavailable, 4 nothing could be
    checked, 5 internal error."""


@cli.command()
@spec_options
@export_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Where to write the .onnx file (default: ./<case id>.onnx).")
@json_option()
def export(variant, opset, exporter, dynamic, allow_mismatch, output, as_json, **kw):
    """Export one norm to a self-contained, checked ONNX file."""
    spec = make_spec(**_spec_args(kw))
    with working(f"exporting {spec.id} ({variant}, opset {opset}, {exporter})", not as_json):
        rep = export_result(spec, variant, opset, exporter, dynamic, output, allow_mismatch)
    if as_json:
        click.echo(json_text(rep.to_dict()))
        return
    from .render import ops_line

    click.echo(f"wrote {rep.path}")
    click.echo(f"  spec     {spec.id}")
    click.echo(f"  variant  {variant} via {exporter}" + ("  (dynamic)" if dynamic else ""))
    click.echo(f"  opset    {rep.opset}" + (f" (requested {opset})" if rep.opset != opset else ""))
    click.echo(f"  ops      {ops_line(rep.ops)}")
    click.echo(f"  size     {rep.size_bytes} bytes")
    if rep.mismatch:
        click.echo(f"  MISMATCH {rep.mismatch}")


@cli.command()
@spec_options
@export_options
@click.option("--model", type=click.Path(), default=None, help="Validate this .onnx file instead of exporting.")
@runtime_option("Comma list: cpu, cuda, reference, torch, torch-cuda, openvino, iree, tvm, mnn, ncnn, ... (see "
                "normonnx list), or all: every ONNX runtime available here (default: the default ones available).")
@inputs_option()
@opt_level_option("ORT graph optimization level (disabled shows a decomposed graph's own numerics).")
@click.option("--threads", type=int, default=None, help="ORT intra-op threads (default: ORT's).")
@click.option("--atol", type=float, default=None, help="Override the dtype's absolute tolerance.")
@click.option("--rtol", type=float, default=None, help="Override the dtype's relative tolerance.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--save-inputs", type=click.Path(file_okay=False), default=None,
              help="Write every input, oracle output and runtime output as .npz here.")
@click.option("--skip-missing", is_flag=True, help="Skip requested runtimes that are unavailable instead of exit 3.")
@allow_not_checked_option
@json_option()
def validate(variant, opset, exporter, dynamic, allow_mismatch, model, runtimes, inputs, opt_level, threads, atol, rtol,
             seed, save_inputs, skip_missing, allow_not_checked, as_json, **kw):
    """Check an exported norm against the float64 oracle on every runtime and input suite."""
    from ..engine.inputs import CheckOptions
    from ..engine.runtimes import RunOptions, SessionConfig
    from ..engine.validate import validate as run_validate
    from ..exporting.export import ExportOptions
    from .render import validation_text

    spec = make_spec(**_spec_args(kw), default_norm=None if model else "ln")
    what = model or f"{spec.id if spec else ''} ({variant}, opset {opset}, {exporter})"
    with working(f"validating {what} on every input suite and runtime", not as_json):
        result = run_validate(
            spec, model=model, export=ExportOptions(variant, opset, exporter, dynamic, allow_mismatch),
            run=RunOptions(runtimes, skip_missing, SessionConfig(opt_level, threads)),
            check=CheckOptions(inputs, atol, rtol, seed, save_inputs, allow_not_checked))
    click.echo(json_text(result.to_dict()) if as_json else validation_text(result))
    return result.exit_code


@cli.command()
@spec_options
@click.option("--variant", "variant_names", default="all", show_default=True,
              help="Comma list of variants, or all.")
@runtimes_options("Comma list: cpu, cuda, openvino, iree, tvm, mnn, ncnn, ..., or all: every one here bench can "
                  "time.", default="cpu", applies=_bench_can_time)
@click.option("--opset", type=int, default=21, show_default=True)
@click.option("--exporter", type=click.Choice(["dynamo", "torchscript"]), default=DEFAULT_EXPORTER, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="Untimed runs first.")
@click.option("--min-time", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Seconds to time each form for, over all rounds.")
@click.option("--rounds", type=click.IntRange(min=3), default=15, show_default=True,
              help="Interleaved rounds: every form runs a batch per round, in a shuffled order.")
@click.option("--threads", type=int, default=None, help="Threads for ORT, torch and the copy (default: all cores).")
@opt_level_option()
@click.option("--no-validate", is_flag=True, help="Skip the validation that picks the fastest correct variant.")
@json_option()
def bench(variant_names, runtimes, providers_alias, opset, exporter, warmup, min_time, rounds, threads, opt_level,
          no_validate, as_json, **kw):
    """Time each graph form on ORT next to PyTorch eager and a copy of the same tensor.

    Without --shape, each norm runs its standard benchmark shape (LN 8x512x768, GN 8x320x64x64 with
    32 groups, IN 8x64x128x128, BN 32x64x56x56)."""
    from ..core.timing import TimingOptions
    from ..engine.bench import bench_spec, benchmark
    from ..engine.runtimes import RunOptions, SessionConfig
    from .render import bench_text

    providers = _runtimes(runtimes, providers_alias, "cpu")
    args = _spec_args(kw)
    kind = args.pop("norm") or "ln"
    spec = bench_spec(kind, args.pop("dtype"), shape=args.pop("shape"), groups=args.pop("groups"),
                      channels=args.pop("channels"), normalized_shape=args.pop("normalized_shape"), eps=args.pop("eps"),
                      affine=not args.pop("no_affine"), bias=not args.pop("no_bias"),
                      track_running_stats=args.pop("track_running_stats"))
    variants = None if variant_names in (None, "all") else [v.strip() for v in variant_names.split(",") if v.strip()]
    progress = None if as_json else (lambda s: click.echo(f"  .. {s}", err=True))
    result = benchmark(spec, variants, run=RunOptions(providers, config=SessionConfig(opt_level, threads)),
                       opset=opset, exporter=exporter, timing=TimingOptions(warmup, min_time, rounds),
                       validate_first=not no_validate, progress=progress)
    click.echo(json_text(result.to_dict()) if as_json else bench_text(result))


def _ints(ctx, param, value):
    if not value:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give comma-separated integers, e.g. 17,18,21") from None


@cli.command()
@click.option("-o", "--out", type=click.Path(file_okay=False), default="normonnx-out", show_default=True,
              help="Folder for results.jsonl and meta.json.")
@click.option("--full", is_flag=True,
              help="The whole matrix: opsets 13,17,18,21,23 x both exporters, every form at every opset "
                   "(default: the quick one, torch's default exporter at the opsets where a form changes).")
@click.option("--norms", callback=_csv, default=None, help="Comma list (default: bn,ln,in,gn,rms).")
@click.option("--variants", callback=_csv, default=None, help="Comma list (default: every variant).")
@click.option("--opsets", callback=_ints, default=None,
              help="Comma list, each form at each (default: 18,21,23 where a form changes; --full: 13,17,18,21,23).")
@click.option("--exporters", callback=_csv, default=None, help="Comma list (default: dynamo; --full: dynamo,torchscript).")
@click.option("--dtypes", callback=_csv, default=None, help="Comma list (default: float32,float16).")
@runtimes_options("Comma list of runtimes, or all: every ONNX runtime available here (default: every ORT provider "
                  "available here).")
@inputs_option()
@click.option("--resume", is_flag=True, help="Skip the cases OUT/results.jsonl already holds.")
@click.option("--force", is_flag=True, help="Discard OUT/results.jsonl and start over.")
@click.option("--jobs", type=click.IntRange(1, 256), default=None,
              help="Parallel processes for accuracy cases (default: one per core, at most 4).")
@click.option("--shard", default=None, help="Run shard K/N of the matrix, e.g. 2/3 (merge them with normonnx merge).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Export cache (default: $NORMONNX_CACHE or ~/.cache/normonnx).")
@click.option("--no-cache", is_flag=True, help="Export every case afresh.")
@click.option("--bench", is_flag=True, help="Also time every variant (standard shapes, after the accuracy cases).")
@click.option("--bench-opset", type=int, default=21, show_default=True)
@click.option("--bench-min-time", type=float, default=0.3, show_default=True)
@click.option("--strict", is_flag=True,
              help="Judge the matrix: exit 1 if a case failed or is a mismatch, 4 if one could not be checked "
                   "(default: exit 0 once the matrix is recorded; 5 on normonnx's own failure either way).")
@allow_not_checked_option
@json_option("Print the summary as JSON.")
def sweep(out, full, norms, variants, opsets, exporters, dtypes, runtimes, providers_alias, inputs, resume, force,
          jobs, shard, cache_dir, no_cache, bench, bench_opset, bench_min_time, strict, allow_not_checked, as_json):
    """Validate (and with --bench, time) a matrix into OUT/results.jsonl, resumably: by default the
    quick one (every norm and form, float32/float16, on torch's default exporter); --full for all."""
    providers = _runtimes(runtimes, providers_alias)
    from ..engine.inputs import CheckOptions
    from ..exporting.cache import default_cache_dir
    from ..features.sweep import BenchOptions, Matrix, SweepOptions, auto_jobs, parse_shard
    from ..features.sweep import sweep as run_sweep

    given = {k: tuple(v) for k, v in dict(norms=norms, variants=variants, opsets=opsets, exporters=exporters,
                                          dtypes=dtypes, providers=providers).items() if v}
    # opsets named on the command line are tried as named, each form at each
    matrix = Matrix(**given) if full or opsets else Matrix.quick(**given)
    jobs = jobs or auto_jobs()
    how = SweepOptions(resume, force, jobs, parse_shard(shard),
                       None if no_cache else (cache_dir or default_cache_dir()), progress=not as_json)
    summary = run_sweep(out, matrix, how=how, check=CheckOptions(inputs),
                        bench=BenchOptions(bench_opset, bench_min_time) if bench else None,
                        warn=lambda m: click.echo(f"warning: {m}", err=True))
    code = summary.exit_code(strict, allow_not_checked)
    if as_json:
        click.echo(json_text({**summary.to_dict(), "exit_code": int(code)}))
        return code
    counts = ", ".join(f"{v} {k}" for k, v in sorted(summary.counts.items())) or "nothing new"
    click.echo(f"{summary.out}/results.jsonl: {counts}"
               + (f"; {summary.skipped_done} already done" if summary.skipped_done else ""))
    v = summary.verdict(allow_not_checked)
    if strict or v.internal:
        from .render import verdict_word

        click.echo(f"{verdict_word(code)}: {v.summary('cases')}, {v.skipped} not applicable")
    click.echo(f"next: normonnx report {summary.out} -o report.html")
    return code


@cli.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("-o", "--out", type=click.Path(file_okay=False), required=True, help="Folder for the merged results.")
@click.option("--force", is_flag=True, help="Replace the results OUT already holds.")
def merge(dirs, out, force):
    """Combine shard folders into one results file (refuses duplicates, malformed lines, mixed tool versions)."""
    from ..features.sweep import merge as run_merge

    n = run_merge(dirs, out, force=force)
    click.echo(f"merged {n} records from {len(dirs)} folders into {out}/results.jsonl")


@cli.command()
@click.argument("base", type=click.Path())
@click.argument("new", type=click.Path())
@click.option("--factor", type=float, default=4.0, show_default=True,
              help="An input suite's error grown by more than this is a regression (within tolerance too).")
@click.option("--floor", type=float, default=1e-6, show_default=True,
              help="Errors below this never count as grown (rounding noise).")
@click.option("--timing", is_flag=True, help="Also compare latencies (sweep --bench): slower with 95 % intervals apart.")
@click.option("--markdown", is_flag=True, help="Print Markdown (a pull-request comment) instead of text.")
@json_option()
def diff(base, new, factor, floor, timing, markdown, as_json):
    """The regression gate: what got worse from BASE to NEW (two sweep folders, or two `scan --validate --json`
    files of one model). Exit 1 on any regression, 0 otherwise, 2 on unusable input."""
    from ..features.diff import diff as run_diff
    from .render import diff_markdown, diff_text

    rep = run_diff(base, new, factor=factor, floor=floor, timing=timing)
    click.echo(json_text(rep.to_dict()) if as_json else diff_markdown(rep) if markdown else diff_text(rep))
    return rep.exit_code


@cli.command()
@click.argument("out", type=click.Path(file_okay=False), default="normonnx-out")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="report.html", show_default=True,
              help="report.html (self-contained) or report.md (for a CI job summary).")
def report(out, output):
    """Write the report of a sweep folder: matrix, error and latency plots, recommendations."""
    from .report import write_report

    path = write_report(out, output, warn=lambda m: click.echo(f"warning: {m}", err=True))
    click.echo(f"wrote {path}")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--validate", "do_validate", is_flag=True, help="Extract each norm and validate it against the oracle.")
@runtime_option("Runtimes for --validate (default: cpu; all: every ONNX runtime available here); with --activations, "
                "each layer is also replayed on these.")
@inputs_option("Input suites for --validate (default: all that apply).")
@input_shape_option("input_ids=2x16")
@click.option("--jobs", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Processes validating layers in parallel.")
@click.option("--no-fusion", is_flag=True,
              help="Skip asking ORT what it fuses in the whole model (its optimizer is the slowest step on huge models).")
@click.option("--activations", is_flag=True,
              help="Also run the model and check every norm on the activations it really sees, with a float16 "
                   "what-if (what ORT fuses is plain scan's: the weights are loaded once, for the run).")
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="--activations on these inputs: an .npz with one array per graph input (optional leading "
                   "sample axis); default: seeded inputs.")
@click.option("--max-samples", type=click.IntRange(min=1), default=1024, show_default=True,
              help="--data: the most samples taken (each is one model run).")
@click.option("--max-data-bytes", type=click.IntRange(min=1), default=1 << 30, show_default=True,
              help="--data: the most bytes its arrays may hold decompressed.")
@click.option("--save-outputs", type=click.Path(), default=None,
              help="--activations: store each judged norm's inputs and outputs (golden outputs): a new folder in "
                   "ONNX's test-data layout (layerK/test_data_set_S/input_0.pb, output_0.pb, model.onnx), or one "
                   "file if the name ends in .npz.")
@click.option("--load-outputs", type=click.Path(), default=None,
              help="--activations: replay the norms stored by --save-outputs on --runtimes (default cpu), against "
                   "the oracle and the stored outputs, instead of running the model.")
@allow_not_checked_option
@json_option()
def scan(model, do_validate, runtimes, inputs, input_shapes, jobs, no_fusion, activations, data, max_samples,
         max_data_bytes, save_outputs, load_outputs, allow_not_checked, as_json):
    """Find every normalization layer in MODEL, with its risks; --validate checks each one on stress
    inputs, --activations on the model's own activations."""
    from ..features.scan import scan as run_scan
    from ..features.scan.capture import Capture
    from ..graph.shapes import parse_input_shapes
    from .render import activations_text, golden_text, scan_text

    for flag, value in (("--data", data), ("--save-outputs", save_outputs), ("--load-outputs", load_outputs)):
        if value is not None and not activations:
            raise click.UsageError(f"{flag} goes with --activations")
    if load_outputs is not None and (data is not None or save_outputs is not None):
        raise click.UsageError("--load-outputs replays stored inputs: leave out --data and --save-outputs")
    progress = None if as_json or not do_validate else (
        lambda i, n, f: click.echo(f"  .. validating {i + 1}/{n}: {f.kind} {f.form} at {f.nodes[0]}", err=True))
    shapes = parse_input_shapes(input_shapes)
    # --activations loads the model's weights once, for its run (begun beside the probe): ORT's optimizer on the
    # whole model is plain scan's
    with Capture(model) if activations and load_outputs is None else contextlib.nullcontext() as capture:
        result = run_scan(model, validate=do_validate, runtimes=runtimes, inputs=inputs, progress=progress,
                          input_shapes=shapes, jobs=jobs, check_fusion=not (no_fusion or activations),
                          allow_not_checked=allow_not_checked, confirming=capture.start if capture else None)
        act = None
        if activations and load_outputs is not None:
            from ..features.scan.golden import check_golden

            act = check_golden(model, load_outputs, runtimes, shapes, progress=None if as_json else (
                lambda i, n, f: click.echo(f"  .. replaying {i + 1}/{n}: {f.kind} {f.form} at {f.nodes[0]}", err=True)))
        elif activations:
            from ..features.scan.activations import check_activations

            act = check_activations(model, data=data, input_shapes=shapes, max_samples=max_samples,
                                    max_data_bytes=max_data_bytes, runtimes=runtimes, save_outputs=save_outputs,
                                    found=(result.norms, result.left_out), capture=capture, progress=None if as_json
                                    else (lambda i, n, f: click.echo(f"  .. activations {i + 1}/{n}: {f.kind} {f.form} "
                                                                     f"at {f.nodes[0]}", err=True)))
    if act is not None:
        act.allow_not_checked = allow_not_checked
    if as_json:
        doc = result.to_dict()
        if act is not None:
            doc["activations"] = act.to_dict()
        click.echo(json_text(doc))
    else:
        shown = "" if act is None else golden_text(act) if load_outputs is not None else activations_text(act)
        click.echo(scan_text(result) + ("\n\n" + shown if shown else ""))
    from ..core.judge import combined_exit

    return combined_exit(result.exit_code, *([act.exit_code] if act is not None else []))


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False), required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Where to write the fixed model (never the input; its external data goes beside it).")
@click.option("--rules", callback=_csv, default=None, help="Only these rules (opt-in ones included); see --list-rules.")
@click.option("--skip-rules", callback=_csv, default=None, help="Rules not to apply.")
@click.option("--dry-run", is_flag=True, help="Say what would change; write nothing.")
@click.option("--check", is_flag=True,
              help="Exit 1 if anything would change or a layer fails (for CI; exit 0 means scan --validate with the "
                   "same runtimes and suites passes too); write nothing.")
@click.option("--opset", type=int, default=None,
              help="Raise the model's opset to this first and write the native op where it passes (e.g. 17 for "
                   "LayerNormalization); default: never.")
@input_shape_option("x=1x3x64x64")
@runtime_option("The runtimes the model ships to: each layer gets a form that passes on all of them "
                "(default: cpu; add reference to run float16 ops in float16, as a GPU does; all: every ONNX "
                "runtime available here).")
@inputs_option("Input suites of the per-layer proof (default: all).")
@click.option("--least-bad", is_flag=True,
              help="Where no form passes, keep the one that fails fewest checks if it fails fewer than the original.")
@click.option("--no-proof", is_flag=True,
              help="Write the rules' first form for every layer with a known risk, unproven (exit 4); the output is "
                   "still checked by onnx.checker.")
@click.option("--no-timing", is_flag=True,
              help="Skip timing: passing forms are then taken in order, and the models are not timed.")
@click.option("--write-unproven", is_flag=True,
              help="Write the output even when it is not proven (a layer still fails, e.g. with --least-bad, or "
                   "something could not be checked); the exit code stays 1/4 and the last line says so. Never "
                   "writes a model that differs from the original.")
@allow_not_checked_option
@click.option("--list-rules", is_flag=True, help="Show the rules and exit.")
@json_option()
def fix(model, output, rules, skip_rules, dry_run, check, opset, input_shapes, runtimes, inputs, least_bad, no_proof,
        no_timing, write_unproven, allow_not_checked, list_rules, as_json):
    """Rewrite the norms of MODEL that fail on the runtimes it ships to into forms that pass there, and prove it."""
    from ..graph.shapes import parse_input_shapes
    from ..repair.fixer import FixOptions, ProofOptions
    from ..repair.fixer import fix as run_fix
    from .render import fix_text, rules_text

    if list_rules:
        click.echo(rules_text())
        return ExitCode.PASSED
    if model is None:
        raise click.UsageError("Missing argument 'MODEL'.")
    progress = None if as_json else (
        lambda i, n, f: click.echo(f"  .. validating {i + 1}/{n}: {f.kind} {f.form} at {f.nodes[0]}", err=True))
    result = run_fix(model, output, mode="check" if check else "dry-run" if dry_run else "fix",
                     change=FixOptions(rules, skip_rules, opset, parse_input_shapes(input_shapes)),
                     proof=ProofOptions(not no_proof, runtimes, inputs, not no_timing, least_bad, allow_not_checked,
                                        write_unproven), progress=progress)
    click.echo(json_text(result.to_dict()) if as_json else fix_text(result))
    return result.exit_code


@cli.command("list")
@click.option("--precision", is_flag=True,
              help="Also open a small LayerNorm on each runtime here and show its version and the precision it runs "
                   "float32 and float16 in (seconds: a compiling runtime takes the most).")
def list_(precision):
    """Show norms, variants (with their opset ranges), exporters, runtimes and input suites."""
    from .catalog import describe

    click.echo(describe(probe=precision))


def main(argv=None) -> None:
    """Entry point of the `normonnx` script (exit codes: normonnx.core.errors)."""
    cli.main(args=argv, prog_name="normonnx")


def _command(args) -> str:
    args = [a for a in args if a != "--debug"]
    return f"{args[0]} " if args and args[0] in cli.commands else ""


if __name__ == "__main__":
    main()

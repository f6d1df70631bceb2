"""The converting runtimes (normonnx/engine/runtimes/: IREE, TVM, MNN, ncnn through pnnx; TensorRT and ORT's TensorRT
provider where installed), table-driven: each skips with why where its package is missing; where installed,
a LayerNorm and a GroupNorm validate with finished comparisons, a model its converter refuses is "not
checked" (never fail), `normonnx list` shows it with its availability. MNN's converter installs and sends
nothing (proved in a subprocess with pip, the shell and the network trapped); third-party runtimes register
through the `normonnx.runtimes` entry-point group, a broken one reported, never raised; "all" is every ONNX
runtime available here."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import run_cli
from normonnx import NormSpec
from normonnx.exporting.export import ExportOptions
from normonnx.engine.inputs import CheckOptions
from normonnx.core.judge import FAIL, NOT_CHECKED, PASS, SKIPPED
from normonnx.engine.runtimes import REGISTRY, ENTRY_POINT_GROUP, RunOptions, RuntimeRegistry, get_runtime, \
    load_plugins, resolve_names
from normonnx.engine.validate import validate

NEW = ("iree", "tvm", "mnn", "ncnn")
GPU_ONLY = ("tensorrt", "ort-tensorrt")


def need(runtime: str) -> None:
    why = get_runtime(runtime).unavailable()
    if why:
        pytest.skip(f"runtime {runtime} is not available here: {why}")


# the forms each runtime converts (ncnn: pnnx drops opset-18 ReduceMean's axes input, so GroupNorm goes at opset 17)
FORMS = {
    "iree": {"ln": ExportOptions("native", 17), "gn": ExportOptions("decomposed", 18)},
    "tvm": {"ln": ExportOptions("native", 17), "gn": ExportOptions("decomposed", 18)},
    "mnn": {"ln": ExportOptions("native", 17), "gn": ExportOptions("decomposed", 18)},
    "ncnn": {"ln": ExportOptions("native", 17), "gn": ExportOptions("decomposed", 17, "torchscript")},
}
SPECS = {"ln": dict(shape=(2, 4, 16)), "gn": dict(shape=(1, 8, 4, 4), groups=4)}


@pytest.mark.parametrize("runtime", NEW + GPU_ONLY)
def test_list_shows_the_runtime_and_whether_it_is_available(runtime):
    r = run_cli("list")
    row = next((ln for ln in r.stdout.splitlines() if ln.startswith(runtime + " ")), None)
    assert row is not None, r.stdout
    why = get_runtime(runtime).unavailable()
    assert (" yes " in row) if why is None else (" no: " in row), row
    assert not get_runtime(runtime).default  # opt-in by name: installing a plugin changes no default run


@pytest.mark.parametrize("kind", ["ln", "gn"])
@pytest.mark.parametrize("runtime", NEW)
def test_a_norm_validates_with_finished_comparisons(runtime, kind):
    need(runtime)
    rep = validate(NormSpec.make(kind, **SPECS[kind]), export=FORMS[runtime][kind], run=RunOptions.on(runtime),
                   check=CheckOptions(["normal", "offset"]))
    mine = [r for r in rep.results if r.runtime == runtime]
    assert mine and all(r.status in (PASS, FAIL) for r in mine), [(r.inputs, r.status, r.error) for r in mine]
    normal = next(r for r in mine if r.inputs == "normal:normal")
    assert normal.status == PASS, (normal.max_abs_err, normal.worst_index, normal.worst_got, normal.worst_expected)
    facts = rep.runtimes[runtime]
    assert facts["version"] and facts["precision"].startswith(("f32", "float32")), facts


def _custom_op_model(path: Path) -> Path:
    """A LayerNorm-shaped model whose one node no converter knows (an op of a made-up domain)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 16])
    node = helper.make_node("Mystery", ["x"], ["y"], domain="com.example.normonnx")
    m = helper.make_model(helper.make_graph([node], "mystery", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example.normonnx", 1)])
    onnx.save(m, str(path))
    return path


@pytest.mark.parametrize("runtime", NEW)
def test_a_model_the_converter_refuses_is_not_checked_never_fail(runtime, tmp_path):
    need(runtime)
    spec = NormSpec.make("ln", shape=(2, 4, 16), affine=False)
    rep = validate(spec, model=_custom_op_model(tmp_path / "m.onnx"), params={}, run=RunOptions.on(runtime),
                   check=CheckOptions(["normal"]))
    assert rep.verdict.status == NOT_CHECKED and rep.exit_code == 4, rep.results
    (r,) = rep.results
    assert r.status == NOT_CHECKED and "Mystery" in r.error and "\n" not in r.error, r.error
    assert rep.runtimes[runtime]["error"] == r.error


# where a runtime's converter refuses (or converts wrongly) a form normonnx exports: said, never a FAIL
REFUSES = {
    "iree": (("gn", "native", 18), "IREE cannot lower onnx.GroupNormalization"),
    "mnn": (("gn", "native", 18), "These Op Not Support: ONNX::GroupNormalization"),
    "ncnn": (("gn", "native", 18), "GroupNorm gn_0 is written for 4 channels but its input blob (8x4x4) has 8"),
}


@pytest.mark.parametrize("runtime", sorted(REFUSES))
def test_an_exported_form_the_converter_cannot_take_is_not_checked_with_its_reason(runtime):
    need(runtime)
    (kind, variant, opset), reason = REFUSES[runtime]
    rep = validate(NormSpec.make(kind, **SPECS[kind]), export=ExportOptions(variant, opset), run=RunOptions.on(runtime),
                   check=CheckOptions(["normal"]))
    assert {r.status for r in rep.results} == {NOT_CHECKED}, rep.results
    assert all(reason in r.error for r in rep.results), rep.results[0].error


def test_ncnn_names_what_pnnx_converts_silently_wrong():
    """Must-detect: opset-18 ReduceMean (axes as an input) becomes a Reduction with no axes (-23303=0), and a
    batch-1 NCHW mean over H, W becomes one over W only; each is a finding in the reason, never a pass."""
    need("ncnn")
    ln = validate(NormSpec.make("ln", **SPECS["ln"]), export=ExportOptions("decomposed", 18), run=RunOptions.on("ncnn"),
                  check=CheckOptions(["normal"]))
    (r,) = ln.results
    assert r.status == NOT_CHECKED and "-23303=0" in r.error and "silently changes the numerics" in r.error, r.error
    inorm = validate(NormSpec.make("in", shape=(1, 8, 4, 4)), export=ExportOptions("decomposed", 17, "torchscript"),
                     run=RunOptions.on("ncnn"), check=CheckOptions(["normal"]))
    (r,) = inorm.results
    assert r.status == NOT_CHECKED and "ncnn ignores axis 3" in r.error, r.error


def test_the_facts_say_what_the_converter_wrote():
    ran = {}
    for runtime, want in (("tvm", "relax.nn.layer_norm"), ("mnn", "LayerNorm"), ("ncnn", "LayerNorm")):
        if get_runtime(runtime).unavailable() is None:
            rep = validate(NormSpec.make("ln", **SPECS["ln"]), export=FORMS[runtime]["ln"], run=RunOptions.on(runtime),
                           check=CheckOptions(["normal"]))
            ran[runtime] = rep.runtimes[runtime]["ran_as"]
            assert want in ran[runtime], ran
    if not ran:
        pytest.skip("none of tvm, mnn, ncnn is installed here")


@pytest.mark.slow
def test_float16_is_judged_as_float16_and_the_precision_in_effect_is_said():
    """MNN and ncnn run a float16 graph in float32 (their converters widen it): judged as the model's dtype, and
    the facts say so."""
    seen = 0
    for runtime in ("mnn", "ncnn"):
        if get_runtime(runtime).unavailable() is not None:
            continue
        rep = validate(NormSpec.make("ln", shape=(2, 4, 16), dtype="float16"), export=ExportOptions("native", 17),
                       run=RunOptions.on(runtime), check=CheckOptions(["normal"]))
        assert rep.verdict.status == PASS, rep.results
        assert "float16 graph" in rep.runtimes[runtime]["precision"], rep.runtimes[runtime]
        seen += 1
    if not seen:
        pytest.skip("neither mnn nor ncnn is installed here")


# -- MNN installs and sends nothing ----------------------------------------------------------------------------
# Run in a child process with every way out trapped: os.system / os.popen / subprocess (how MNN's usage logger
# runs `pip install`), sockets and urllib (how it posts), and a `pip` first on PATH that only leaves a mark.
TRAPS = textwrap.dedent("""
    import json, os, socket, subprocess, sys, urllib.request
    calls = []
    def trap(what):
        def blocked(*a, **k):
            calls.append([what, repr(a)[:200]])
            raise RuntimeError("blocked by the test: " + what)
        return blocked
    os.system, os.popen = trap("os.system"), trap("os.popen")
    subprocess.Popen = trap("subprocess.Popen")
    socket.socket.connect, socket.socket.connect_ex = trap("socket.connect"), trap("socket.connect_ex")
    socket.create_connection, socket.getaddrinfo = trap("socket.create_connection"), trap("socket.getaddrinfo")
    urllib.request.urlopen = trap("urllib.request.urlopen")
""")


def _trapped(tmp_path: Path, body: str, strace: str | None = None) -> tuple[dict, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    mark = tmp_path / "pip-ran"
    for name in ("pip", "pip3"):
        (bin_dir / name).write_text(f"#!/bin/sh\necho \"$0 $*\" >> {mark}\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    script = tmp_path / "child.py"
    script.write_text(TRAPS + textwrap.dedent(body) + "\nprint('RESULT ' + json.dumps(out))\n")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PIP_NO_INDEX": "1",
           "PIP_INDEX_URL": "http://127.0.0.1:9/", "PIP_FIND_LINKS": ""}  # the installed normonnx (CI installs a wheel)
    cmd = [sys.executable, str(script)]
    if strace:
        cmd = [strace, "-f", "-e", "trace=connect,sendto,sendmsg,execve", "-o", str(tmp_path / "trace.txt")] + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert p.returncode == 0 and line, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    doc = json.loads(line[len("RESULT "):])
    doc["pip_ran"] = mark.read_text() if mark.exists() else None
    return doc, tmp_path / "trace.txt"


MNN_PLUGIN = """
    import numpy as np
    from normonnx.engine.runtimes import SessionConfig, get_runtime
    s = get_runtime("mnn").open(sys.argv[0].replace("child.py", "ln.onnx"), SessionConfig())
    x = np.random.default_rng(0).standard_normal((2, 4, 16)).astype(np.float32)
    y = s.run(x)
    out = {"calls": calls, "shape": list(y.shape), "logger": sorted(m for m in sys.modules if m.startswith("MNN.tools")),
           "ran_as": s.facts["ran_as"]}
"""


def _ln_file(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 16])
    w = helper.make_tensor("w", TensorProto.FLOAT, [16], np.ones(16, np.float32))
    b = helper.make_tensor("b", TensorProto.FLOAT, [16], np.zeros(16, np.float32))
    node = helper.make_node("LayerNormalization", ["x", "w", "b"], ["y"], axis=-1, epsilon=1e-5)
    onnx.save(helper.make_model(helper.make_graph([node], "ln", [x], [y], [w, b]),
                                opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "ln.onnx"))


def test_mnn_conversion_installs_nothing_and_sends_nothing(tmp_path):
    need("mnn")
    _ln_file(tmp_path)
    doc, _ = _trapped(tmp_path, MNN_PLUGIN)
    assert doc["calls"] == [] and doc["pip_ran"] is None, doc  # no shell, no pip, no socket, no URL
    assert doc["logger"] == [], doc  # MNN.tools (the console scripts and their logger) never imported
    assert doc["shape"] == [2, 4, 16] and doc["ran_as"] == {"LayerNorm": 1}, doc


def test_the_trap_catches_what_mnns_console_script_module_does(tmp_path):
    """Must-detect: the same child importing MNN's console-script module (what `mnnconvert` runs) trips the
    trap with a `pip install` through the shell -- the test above would see it if the plugin did that."""
    need("mnn")
    doc, _ = _trapped(tmp_path, """
        try:
            import aliyun.log  # noqa: F401  (installed: the logger would skip pip and only post)
            have_sdk = True
        except ImportError:
            have_sdk = False
        import MNN.tools.mnnconvert  # noqa: F401
        out = {"calls": calls, "have_sdk": have_sdk}
    """)
    if doc["have_sdk"]:
        pytest.skip("aliyun-log-python-sdk is installed here, so MNN's logger has nothing to pip-install")
    assert any(what == "os.system" and "pip install" in args for what, args in doc["calls"]), doc
    assert doc["pip_ran"] is None  # blocked before the shell: nothing installed by this test either


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed (apt-get install strace)")
def test_mnn_conversion_makes_no_network_call_even_from_native_code(tmp_path):
    """MNN's converter extension links cpp-httplib (connect, getaddrinfo): under strace the plugin's whole run,
    native code included, makes no IP connection and starts no program."""
    need("mnn")
    _ln_file(tmp_path)
    doc, trace = _trapped(tmp_path, MNN_PLUGIN, strace=shutil.which("strace"))
    assert doc["calls"] == [] and doc["pip_ran"] is None, doc
    lines = trace.read_text().splitlines()
    inet = [ln for ln in lines if ("connect(" in ln or "sendto(" in ln or "sendmsg(" in ln)
            and ("AF_INET" in ln or "AF_INET6" in ln)]
    execs = [ln for ln in lines if "execve(" in ln and "resumed" not in ln]
    assert inet == [], inet
    assert len(execs) == 1 and sys.executable.split("/")[-1] in execs[0], execs  # only the child python itself


# -- the unavailable path -------------------------------------------------------------------------------------
HIDE = {"iree": ["iree", "iree.compiler", "iree.runtime"], "tvm": ["tvm"], "mnn": ["MNN", "_tools"],
        "ncnn": ["ncnn"]}
INSTALL = {"iree": 'pip install "normonnx[iree]"', "tvm": 'pip install "normonnx[tvm]"',
           "mnn": 'pip install "normonnx[mnn]"', "ncnn": 'pip install "normonnx[ncnn]"'}


def test_each_runtime_says_how_to_install_it_where_it_is_missing():
    code = ("import sys, json\n"
            f"for m in {sum(HIDE.values(), [])!r}: sys.modules[m] = None\n"
            "from normonnx.engine.runtimes import get_runtime\n"
            f"print(json.dumps({{n: get_runtime(n).unavailable() for n in {list(HIDE)!r}}}))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    why = json.loads(p.stdout.splitlines()[-1])
    for name, line in INSTALL.items():
        assert why[name] and line in why[name], (name, why[name])


def test_ncnn_without_pnnx_says_to_install_it_without_its_dependencies():
    code = ("import sys; sys.modules['pnnx'] = None\n"
            "from normonnx.engine.runtimes import get_runtime\n"
            "print(get_runtime('ncnn').unavailable())\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "pip install --no-deps pnnx" in p.stdout, (p.stdout, p.stderr)


def test_naming_a_missing_runtime_is_exit_3_with_why():
    code = ("import sys\n"
            "for m in ('iree', 'iree.compiler', 'iree.runtime'): sys.modules[m] = None\n"
            "from normonnx.presentation.cli import main\n"
            "sys.argv = ['normonnx', 'validate', '--norm', 'ln', '--runtimes', 'iree']\n"
            "main()")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 3, p.stderr
    assert INSTALL["iree"] in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("runtime", GPU_ONLY)
def test_tensorrt_is_cleanly_unavailable_without_it(runtime):
    why = get_runtime(runtime).unavailable()
    if why is None:
        pytest.skip(f"{runtime} is available here: its tables belong to a GPU run")
    assert "\n" not in why and len(why) < 300, why
    r = run_cli("validate", "--norm", "ln", "--runtimes", runtime, "--inputs", "normal")
    assert r.returncode == 3 and runtime in r.stderr and "Traceback" not in r.stderr, r.stderr
    skipped = validate(NormSpec.make("ln", shape=(2, 4, 16)), run=RunOptions.on("cpu", runtime, skip_missing=True),
                       check=CheckOptions(["normal"]))
    assert {(r.runtime, r.status) for r in skipped.results} >= {(runtime, SKIPPED), ("cpu", PASS)}


# -- "all" ----------------------------------------------------------------------------------------------------
def test_all_is_every_onnx_runtime_available_here():
    names = resolve_names(["all"])
    here = [n for n, r in REGISTRY.items() if r.kind == "onnx" and r.unavailable() is None]
    assert list(names) == here and "cpu" in names and "torch" not in names
    assert [n for n in NEW if get_runtime(n).unavailable() is None] == [n for n in names if n in NEW]
    assert resolve_names(["cpu", "all"])[0] == "cpu" and len(set(resolve_names(["cpu", "all"]))) == len(names)
    # the library's entry points take it too: validate, scan and fix, sweep, bench (what it can time)
    from normonnx.engine.bench import _check_request, can_time
    from normonnx.engine.layers import check_runtime_request
    from normonnx.features.sweep import Matrix
    from normonnx.engine.validate import choose_runtimes

    assert choose_runtimes(("all",), False)[0] == list(names)
    assert check_runtime_request(["all"], None) == list(names)
    assert Matrix(norms=("ln",), providers=("all",)).providers == names
    timed = _check_request(NormSpec.make("ln"), None, ["all"], 21, 0, 0.0, 3)[1]
    assert timed == [n for n in names if can_time(get_runtime(n))] and "reference" not in timed  # no bind: not timed


@pytest.mark.slow
def test_validate_runtimes_all_runs_on_every_runtime_here():
    r = run_cli("validate", "--norm", "ln", "--shape", "2x4x16", "--variant", "native", "--opset", "17",
                "--runtimes", "all", "--inputs", "normal", "--json")
    doc = json.loads(r.stdout)
    assert {x["runtime"] for x in doc["results"]} == set(resolve_names(["all"])), doc["results"]
    assert r.returncode == 0 and doc["verdict"] == PASS, [(x["runtime"], x["status"], x["error"]) for x in doc["results"]]
    assert all("precision" in f for f in doc["runtimes"].values()), doc["runtimes"]


# -- third-party runtimes -------------------------------------------------------------------------------------
PLUGIN = '''
"""A third-party runtime: ONNX Runtime CPU under another name (what a plugin package would ship)."""
from normonnx.engine.runtimes import Runtime, Session, get_runtime


def _open(model_path, config, module=None):
    inner = get_runtime("cpu").open(model_path, config, module)
    return Session("fake", inner.run, {"version": "0.1", "precision": "f32", "wraps": "cpu"}, inner.handle,
                   str(model_path))


RUNTIME = Runtime("fake", "a test plugin (ONNX Runtime CPU renamed)", lambda: None, _open, default=False)
'''


def _plugin_dist(tmp_path: Path) -> Path:
    """An installed distribution on a path of its own: modules plus a .dist-info with entry points."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "fake_rt.py").write_text(PLUGIN)
    (site / "broken_rt.py").write_text("raise ImportError('fake_rt needs libfake.so.1')\n")
    info = site / "normonnx_fake_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: normonnx-fake-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nfake = fake_rt:RUNTIME\n"
                                           "broken = broken_rt:RUNTIME\nopenvino = fake_rt:RUNTIME\n")
    return site


def test_a_plugin_registers_through_the_entry_point_group_lazily(tmp_path):
    site = _plugin_dist(tmp_path)
    code = textwrap.dedent("""
        import json, sys, warnings
        warnings.simplefilter("ignore")
        import normonnx.engine.runtimes as rt
        lazy = "fake_rt" not in sys.modules
        names = list(rt.REGISTRY)
        out = {"lazy": lazy, "names": names, "loaded": "fake_rt" in sys.modules,
               "fake": rt.get_runtime("fake").unavailable(), "broken": rt.get_runtime("broken").unavailable(),
               "plugin": rt.get_runtime("fake").plugin, "openvino": rt.get_runtime("openvino").plugin}
        print(json.dumps(out))
    """)
    env = {**os.environ, "PYTHONPATH": str(site)}  # the installed normonnx, never the checkout (CI installs a wheel)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout.splitlines()[-1])
    assert doc["lazy"] and doc["loaded"], doc  # imported when the registry is first read, not on import
    assert {"fake", "broken"} <= set(doc["names"]) and doc["names"].count("openvino") == 1, doc
    assert doc["fake"] is None and doc["plugin"] == "fake_rt:RUNTIME"
    assert "broken_rt:RUNTIME failed to load (ImportError: fake_rt needs libfake.so.1)" in doc["broken"], doc
    assert doc["openvino"] is None  # a plugin cannot take a built-in runtime's name


@pytest.mark.slow
def test_list_and_validate_with_a_plugin_and_a_broken_one(tmp_path):
    site = _plugin_dist(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(site)}  # the installed normonnx, never the checkout (CI installs a wheel)
    listed = subprocess.run([sys.executable, "-m", "normonnx.presentation.cli", "list"], capture_output=True, text=True,
                            timeout=300, env={**env, "COLUMNS": "300"}, cwd=tmp_path)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    rows = {ln.split()[0]: ln for ln in listed.stdout.splitlines() if ln.split()}
    assert " yes " in rows["fake"] and " no: the plugin broken_rt:RUNTIME failed to load" in rows["broken"], rows
    ok = subprocess.run([sys.executable, "-m", "normonnx.presentation.cli", "validate", "--norm", "ln",
                         "--runtimes", "fake",
                         "--inputs", "normal", "--json"], capture_output=True, text=True, timeout=300, env=env,
                        cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["runtimes"]["fake"]["wraps"] == "cpu"
    bad = subprocess.run([sys.executable, "-m", "normonnx.presentation.cli", "validate", "--norm", "ln",
                          "--runtimes", "broken",
                          "--inputs", "normal"], capture_output=True, text=True, timeout=300, env=env,
                         cwd=tmp_path)
    assert bad.returncode == 3 and "failed to load" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_load_plugins_takes_runtimes_lists_and_factories(monkeypatch):
    """Through a monkeypatched entry-point reader: a list, a factory, a non-Runtime, a name mismatch and an
    availability check that raises."""
    from importlib.metadata import EntryPoint

    import normonnx.engine.runtimes as rt

    mod = type(sys)("normonnx_test_plugins")
    mk = lambda name: rt.Runtime(name, "test", lambda: None, lambda *a: None, default=False)  # noqa: E731
    mod.many = [mk("many"), mk("many-b")]
    mod.factory = lambda: mk("factory")
    mod.wrong = object()
    mod.other = mk("someone-else")

    def crash():
        raise OSError("libfake.so.2: cannot open shared object file")

    mod.crashy = rt.Runtime("crashy", "test", crash, lambda *a: None, default=False)
    monkeypatch.setitem(sys.modules, "normonnx_test_plugins", mod)
    names = ("many", "factory", "wrong", "other", "crashy")
    eps = [EntryPoint(n, f"normonnx_test_plugins:{n}", ENTRY_POINT_GROUP) for n in names]
    monkeypatch.setattr(rt.base, "_entry_points", lambda: eps)
    reg = RuntimeRegistry("runtime")
    load_plugins(reg)
    got = {n: dict.__getitem__(reg, n) for n in dict.keys(reg)}
    assert set(got) == {"many", "many-b", "factory", "wrong", "other", "someone-else", "crashy"}
    assert got["many-b"].plugin == "normonnx_test_plugins:many" and got["factory"].unavailable() is None
    assert "gave object, not a normonnx.engine.runtimes.Runtime" in got["wrong"].unavailable()
    assert "registered no runtime named 'other'" in got["other"].unavailable()
    # a plugin whose availability check raises is unavailable with why (`normonnx list` asks every runtime)
    assert "failed to say whether it is available (OSError: libfake.so.2" in got["crashy"].unavailable()


def test_mnn_takes_float16_parameters_held_in_int32_data(tmp_path):
    """MNN's converter dies with SIGSEGV on a float16 tensor in int32_data (an encoding ONNX allows; onnx.helper's
    make_tensor writes it): the plugin hands it raw_data, so the layer runs. In a child process: on the old code
    the crash took the whole process (and a pytest worker) with it."""
    need("mnn")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 4, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 4, 16])
    w = helper.make_tensor("w", TensorProto.FLOAT16, [16], np.linspace(0.5, 1.5, 16).astype(np.float16))
    b = helper.make_tensor("b", TensorProto.FLOAT16, [16], np.zeros(16, np.float16))
    assert len(w.int32_data) == 16 and not w.raw_data  # the encoding under test
    node = helper.make_node("LayerNormalization", ["x", "w", "b"], ["y"], axis=-1, epsilon=1e-5)
    onnx.save(helper.make_model(helper.make_graph([node], "ln", [x], [y], [w, b]),
                                opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "ln16.onnx"))
    code = textwrap.dedent("""
        import sys, numpy as np
        from normonnx.engine.runtimes import SessionConfig, get_runtime
        s = get_runtime("mnn").open(sys.argv[1], SessionConfig())
        x = np.random.default_rng(0).standard_normal((2, 4, 16)).astype(np.float16)
        m, v = x.astype(np.float64).mean(-1, keepdims=True), x.astype(np.float64).var(-1, keepdims=True)
        want = (x - m) / np.sqrt(v + 1e-5) * np.linspace(0.5, 1.5, 16)
        print(float(np.abs(s.run(x).astype(np.float64) - want).max()))
    """)
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ln16.onnx")], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    assert float(p.stdout.split()[-1]) < 1e-2  # float16 output of a float32 computation

"""Results files, folders and the cache as hostile data: malformed lines with their line numbers
(skipped by report, refused by merge, re-run by resume), one writer per folder, a poisoned cache
entry caught, HTML from a results file escaped, unusable folders refused before any work."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import onnx
import pytest

from conftest import one_line_error, run_cli
from normonnx.exporting.cache import ExportCache
from normonnx.core.results import RESULTS, FolderLock, make_record, read_results
from normonnx.core.spec import NormSpec
from normonnx.engine.inputs import CheckOptions
from normonnx.features.sweep import SweepOptions, Matrix, sweep

ONE = Matrix(norms=("ln",), variants=("native",), opsets=(17, 18), exporters=("dynamo",), dtypes=("float32",),
             providers=("cpu",))
INPUTS = ["normal"]
SWEEP_ARGS = ["--norms", "ln", "--variants", "native", "--opsets", "17,18", "--exporters", "dynamo", "--dtypes",
              "float32", "--runtimes", "cpu", "--inputs", "normal"]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A finished two-case sweep and its warm cache."""
    root = tmp_path_factory.mktemp("done")
    sweep(root / "out", ONE, how=SweepOptions(cache_dir=root / "cache", progress=False),
          check=CheckOptions(inputs=INPUTS))
    return root


def _lines(folder) -> list[bytes]:
    return (folder / RESULTS).read_bytes().splitlines(keepends=True)


def _copy_with(done, tmp_path, extra: bytes, name="o"):
    out = tmp_path / name
    out.mkdir()
    (out / RESULTS).write_bytes(b"".join(_lines(done / "out")) + extra)
    (out / "meta.json").write_bytes((done / "out" / "meta.json").read_bytes())
    return out


def _valid(done) -> dict:
    return json.loads(_lines(done / "out")[0])


# name -> (the malformed line, the reason read_results gives)
MALFORMED = {
    "json-array": (lambda r: b"[1, 2, 3]\n", "a JSON list, not an object"),
    "json-number": (lambda r: b"42\n", "a JSON int, not an object"),
    "no-case-id": (lambda r: json.dumps({k: v for k, v in r.items() if k != "case_id"}).encode() + b"\n",
                   "field 'case_id' is missing"),
    "invalid-utf8": (lambda r: b'{"case_id": "\xff\xfe"}\n', "not UTF-8 text"),
    "opset-as-string": (lambda r: json.dumps(dict(r, opset="18")).encode() + b"\n", "field 'opset' is \"18\""),
    "unknown-status": (lambda r: json.dumps(dict(r, status="maybe")).encode() + b"\n", "status 'maybe'"),
    "old-schema": (lambda r: json.dumps({k: v for k, v in r.items() if k != "schema"}).encode() + b"\n",
                   "no 'schema' field"),
    "duplicate": (lambda r: json.dumps(r).encode() + b"\n", "duplicate of case"),
    "garbage": (lambda r: b"\x00\x01 not json at all\n", "not a valid record"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_line_is_named_skipped_by_report_refused_by_merge_rerun_by_resume(done, tmp_path, name):
    make, why = MALFORMED[name]
    out = _copy_with(done, tmp_path, make(_valid(done)))
    lineno = len(_lines(done / "out")) + 1
    records, bad = read_results(out / RESULTS)
    assert len(records) == 2 and len(bad) == 1
    assert bad[0].lineno == lineno and why in bad[0].why, str(bad[0])
    # report: skipped with a warning naming the line, the report still written
    proc = run_cli("report", str(out), "-o", str(tmp_path / "r.html"))
    assert proc.returncode == 0 and f"warning: {out / RESULTS} line {lineno}:" in proc.stderr
    assert (tmp_path / "r.html").is_file()
    # merge: refused, naming the file and the line
    one_line_error(run_cli("merge", str(out), "-o", str(tmp_path / "m")), 2, f"{RESULTS} line {lineno}:")
    # resume: the line moves to results.rejected.jsonl, nothing is lost, the file is clean again
    proc = run_cli("sweep", "-o", str(out), "--resume", "--cache-dir", str(done / "cache"), *SWEEP_ARGS)
    assert proc.returncode == 0, proc.stderr
    assert "1 malformed lines moved to" in proc.stderr
    records, bad = read_results(out / RESULTS)
    assert not bad and sorted(r["case_id"] for r in records) == sorted(c.id for c in ONE.cases())
    assert (out / "results.rejected.jsonl").read_bytes() == make(_valid(done))


def test_torn_last_line_reruns_its_case(done, tmp_path):
    lines = _lines(done / "out")
    out = tmp_path / "o"
    out.mkdir()
    (out / RESULTS).write_bytes(lines[0] + lines[1][: len(lines[1]) // 2])  # killed mid-write
    records, bad = read_results(out / RESULTS)
    assert len(records) == 1 and "torn last line" in bad[0].why
    summary = sweep(out, ONE, how=SweepOptions(resume=True, cache_dir=done / "cache", progress=False),
                    check=CheckOptions(inputs=INPUTS))
    assert summary.counts == {"pass": 1} and summary.rejected == 1
    assert len(read_results(out / RESULTS)[0]) == 2


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_corrupt_meta_json(done, tmp_path, content):
    out = _copy_with(done, tmp_path, b"")
    (out / "meta.json").write_bytes(content)
    proc = run_cli("report", str(out), "-o", str(tmp_path / "r.md"))
    assert proc.returncode == 0 and "meta.json is corrupt" in proc.stderr and "warning:" in proc.stderr
    one_line_error(run_cli("merge", str(out), "-o", str(tmp_path / "m")), 2, "meta.json is corrupt")
    # resume rewrites meta.json
    assert run_cli("sweep", "-o", str(out), "--resume", *SWEEP_ARGS, "--cache-dir", str(done / "cache")).returncode == 0
    assert json.loads((out / "meta.json").read_text())["matrix"]["norms"] == ["ln"]


def test_a_second_writer_is_refused_at_once(done, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    with FolderLock(out):
        proc = run_cli("sweep", "-o", str(out), *SWEEP_ARGS, "--cache-dir", str(done / "cache"))
        one_line_error(proc, 2, "is being written by another normonnx", f"pid {os.getpid()}")
        one_line_error(run_cli("merge", str(done / "out"), "-o", str(out)), 2, "being written by another normonnx")
    assert not (out / RESULTS).exists()
    # released: the next sweep runs
    assert run_cli("sweep", "-o", str(out), *SWEEP_ARGS, "--cache-dir", str(done / "cache")).returncode == 0


def test_two_sweeps_racing_for_one_folder_record_each_case_once(done, tmp_path):
    """Two real processes started together on one folder: one holds the lock; the other either is
    refused (exit 2) or, arriving after, finds every case done. Never a case recorded twice."""
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "normonnx.presentation.cli", "sweep", "-o", str(out), "--resume", *SWEEP_ARGS,
           "--cache-dir", str(done / "cache")]
    # cwd outside the checkout: its normonnx/ would shadow the installed package (CI's install is not editable)
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    if codes == [0, 2]:
        assert "being written by another normonnx" in next(e for c, e in results if c == 2)
    records, bad = read_results(out / RESULTS)
    assert not bad and sorted(r["case_id"] for r in records) == sorted(c.id for c in ONE.cases())


def test_a_results_file_that_is_a_link_is_exit_2_naming_it(done, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    os.symlink("/dev/full", out / RESULTS)  # a link: refused before any write (never written through)
    proc = run_cli("sweep", "-o", str(out), *SWEEP_ARGS, "--cache-dir", str(done / "cache"), "--json")
    one_line_error(proc, 2, f"results file {out / RESULTS} is a symbolic link")


def test_merge_refuses_a_folder_with_results_unless_force(done, tmp_path):
    out = tmp_path / "m"
    assert run_cli("merge", str(done / "out"), "-o", str(out)).returncode == 0
    before = (out / RESULTS).read_bytes()
    one_line_error(run_cli("merge", str(done / "out"), "-o", str(out)), 2, "already holds results", "--force")
    assert (out / RESULTS).read_bytes() == before
    assert run_cli("merge", str(done / "out"), "-o", str(out), "--force").returncode == 0


def test_merged_meta_lists_every_shards_matrix(done, tmp_path):
    gn = Matrix(norms=("gn",), variants=("instance-trick",), opsets=(18,), exporters=("dynamo",),
                dtypes=("float32",), providers=("cpu",))
    sweep(tmp_path / "g", gn, how=SweepOptions(cache_dir=done / "cache", progress=False),
          check=CheckOptions(inputs=INPUTS))
    assert run_cli("merge", str(done / "out"), str(tmp_path / "g"), "-o", str(tmp_path / "m")).returncode == 0
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    assert meta["matrix"]["norms"] == ["ln", "gn"] and set(meta["matrix"]["variants"]) == {"native", "instance-trick"}


def test_html_from_a_results_file_is_escaped(done, tmp_path):
    evil = "<script>alert(1)</script>"
    rec = dict(_valid(done), case_id="evil-case", exporter=evil, provider=evil + "p", dtype=evil + "d",
               status="fail", reason=evil, worst_input=evil)
    out = _copy_with(done, tmp_path, json.dumps(rec).encode() + b"\n")
    assert run_cli("report", str(out), "-o", str(tmp_path / "r.html")).returncode == 0
    page = (tmp_path / "r.html").read_text()
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert run_cli("report", str(out), "-o", str(tmp_path / "r.md")).returncode == 0
    assert "<script" not in (tmp_path / "r.md").read_text()


def test_a_poisoned_cache_entry_is_a_miss_and_a_warning(tmp_path):
    """Replace a cached model by another model: the next request notices and exports again."""
    cache = ExportCache(tmp_path / "c")
    ln, bn = NormSpec.make("ln"), NormSpec.make("bn")
    p_ln = cache.export(ln, "native", 18, "dynamo")
    p_bn = cache.export(bn, "native", 18, "dynamo")
    p_ln.write_bytes(p_bn.read_bytes())
    (p_ln.with_suffix(".sha256")).write_bytes(p_bn.with_suffix(".sha256").read_bytes())  # a consistent forgery
    again = ExportCache(tmp_path / "c")
    with pytest.warns(UserWarning, match="holds another model .*spec"):
        p = again.export(ln, "native", 18, "dynamo")
    assert again.misses == 1 and again.rejected == 1
    from normonnx.graph.graph import metadata

    assert json.loads(metadata(onnx.load(str(p)))["spec"]) == ln.to_dict()
    # a flipped byte: the checksum catches it
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="does not match its checksum"):
        ExportCache(tmp_path / "c").export(ln, "native", 18, "dynamo")


@pytest.mark.parametrize("where", ["file", "proc"])
def test_an_unusable_cache_folder_is_exit_2_before_any_case(tmp_path, where):
    if where == "file":
        (tmp_path / "f").write_text("x")
        cache = tmp_path / "f"
    else:
        cache = "/proc/normonnx-cache"
    proc = run_cli("sweep", "-o", str(tmp_path / "o"), *SWEEP_ARGS, "--cache-dir", str(cache))
    one_line_error(proc, 2, *(["is a file"] if where == "file" else ["cannot use cache folder", "--no-cache"]))
    from normonnx.core.errors import BadInput

    with pytest.raises(BadInput, match="cannot use cache folder .*--no-cache"):  # the library says it too
        ExportCache(cache)
    assert not (tmp_path / "o" / RESULTS).exists()


def test_make_record_refuses_what_readers_would_refuse():
    with pytest.raises(ValueError, match="field 'opset'"):
        make_record("case", case_id="x", status="pass", norm="ln", variant="native", opset="18", exporter="dynamo",
                    dtype="float32", provider="cpu", versions={})


@pytest.mark.parametrize("path_kind", ["symlink", "device", "folder"])
def test_output_paths_that_are_not_regular_files_are_refused(tmp_path, path_kind):
    target = tmp_path / "target.onnx"
    target.write_text("keep me")
    out = tmp_path / "out.onnx"
    if path_kind == "symlink":
        os.symlink(target, out)
    elif path_kind == "device":
        out = "/dev/null"
    else:
        out.mkdir()
    needle = {"symlink": "symbolic link", "device": "not a regular file", "folder": "directory"}[path_kind]
    one_line_error(run_cli("export", "-o", str(out)), 2, needle)
    assert target.read_text() == "keep me"


def test_a_record_cut_just_before_its_newline_is_not_glued_to_the_next(done, tmp_path):
    lines = _lines(done / "out")
    out = tmp_path / "o"
    out.mkdir()
    (out / RESULTS).write_bytes(lines[0].rstrip(b"\n"))  # complete JSON, newline lost
    sweep(out, ONE, how=SweepOptions(resume=True, cache_dir=done / "cache", progress=False),
          check=CheckOptions(inputs=INPUTS))
    records, bad = read_results(out / RESULTS)
    assert not bad and len(records) == 2


def test_an_edited_reference_module_is_exported_afresh(tmp_path, monkeypatch):
    """The cache key holds a hash of normonnx's source: edit a reference module (in a temp copy of
    models/, standing in for the installed one) and the next request is a miss, not the old export."""
    import importlib
    import shutil

    import normonnx.models

    export_mod = importlib.import_module("normonnx.exporting.export")

    copy = tmp_path / "models"
    shutil.copytree(next(iter(normonnx.models.__path__)), copy)
    roots = [r for r in export_mod.source_roots() if r.name != "models"] + [copy]
    monkeypatch.setattr(export_mod, "source_roots", lambda: roots)
    ln = NormSpec.make("ln")
    cache = ExportCache(tmp_path / "c")
    cache.export(ln, "native", 18, "dynamo")
    assert ExportCache(tmp_path / "c").key(ln, "native", 18, "dynamo", False, False) == \
        cache.key(ln, "native", 18, "dynamo", False, False)
    with (copy / "native.py").open("a") as f:
        f.write("\n# an edit\n")
    again = ExportCache(tmp_path / "c")
    again.export(ln, "native", 18, "dynamo")
    assert again.misses == 1 and again.hits == 0


def test_a_failure_in_normonnx_own_translation_is_internal_and_never_cached(tmp_path, monkeypatch):
    """An exception raised inside normonnx's exporter translation (not inside torch's exporter) is exit 5
    with the report-it line, and leaves no cache entry, error or model."""
    import normonnx.exporting.translations as translations

    # a bug inside normonnx's own code: the translation factory handed a spec it cannot read
    real = translations._gn_dynamo_translation
    monkeypatch.setattr(translations, "_gn_dynamo_translation", lambda spec, opset: real(None, opset))
    cache = ExportCache(tmp_path / "c")
    with pytest.raises(AttributeError):
        cache.export(NormSpec.make("gn", groups=4), "native", 18, "dynamo")
    entries = [p for p in (tmp_path / "c").rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert entries == [], entries
    r = run_cli("export", "--norm", "gn", "--groups", "4", "-o", str(tmp_path / "gn.onnx"))
    assert r.returncode == 5 and "internal error" in r.stderr, (r.returncode, r.stderr[-500:])
    assert "Traceback" not in r.stderr and not (tmp_path / "gn.onnx").exists()

"""Shared helpers for the test suite (real exports, real ORT sessions; no mocks)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


def _keep_bytecode() -> None:
    """Where PYTHONDONTWRITEBYTECODE is set (as on these machines and in CI), every interpreter the suite
    starts (the xdist workers, the CLI in a subprocess, a sweep's spawned workers) compiles torch, onnx,
    onnxscript and onnxruntime from source again: 10 s of each start instead of 3 s, half the suite's
    time. The suite keeps its bytecode in a folder of its own, never beside the installed sources, and
    the interpreters it starts inherit the setting."""
    if not os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return  # bytecode is written where Python writes it by default
    prefix = os.environ.get("PYTHONPYCACHEPREFIX") or str(Path(__file__).resolve().parent.parent / ".pytest_cache"
                                                          / "pycache")
    try:
        Path(prefix).mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # a read-only checkout: compiled afresh, as before
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = prefix
    sys.dont_write_bytecode = False
    sys.pycache_prefix = prefix


_keep_bytecode()


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd=None, columns: int = 1000) -> Run:
    """The command line in-process (click's CliRunner): the same parsing, exit-code mapping and
    stderr as the installed script, without a new interpreter and torch import per call. Tables are
    drawn `columns` wide: by default wide enough to keep each cell on one line, so a test finds a
    phrase whole (tests/test_render_width.py checks the wrapping at a terminal's width)."""
    from click.testing import CliRunner

    from normonnx.presentation.cli import cli

    with contextlib.chdir(cwd) if cwd else contextlib.nullcontext():
        r = CliRunner(env={"COLUMNS": str(columns)}).invoke(cli, list(args), prog_name="normonnx",
                                                             catch_exceptions=False)
    return Run(r.exit_code, r.stdout, r.stderr)


def run_cli_process(*args: str, cwd=None, env=None) -> Run:
    """The installed `normonnx` command in a subprocess, as a user runs it (for end-to-end tests)."""
    p = subprocess.run([sys.executable, "-m", "normonnx.presentation.cli", *args], capture_output=True, text=True,
                       cwd=cwd,
                       timeout=600, env={**os.environ, **(env or {})})
    return Run(p.returncode, p.stdout, p.stderr)


def has_cuda_ep() -> bool:
    from normonnx.engine.runtimes import get_runtime

    return get_runtime("cuda").unavailable() is None


requires_cuda = pytest.mark.skipif(not has_cuda_ep(), reason="onnxruntime has no CUDAExecutionProvider here")


def one_line_error(proc: Run, code: int, *needles: str) -> None:
    """Exit `code`, exactly one line on stderr starting 'error: ' and holding every needle, no traceback.
    Progress lines ('  .. exporting ...', printed once work has run two seconds) may come before it."""
    assert proc.returncode == code, (proc.returncode, proc.stdout[-500:], proc.stderr[-1500:])
    err = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("  .. ")).strip()
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    for n in needles:
        assert n in err, (n, err)


# -- the slow tier -------------------------------------------------------------------------------------
# `pytest` runs everything (CI and the README's test command do); `pytest -m "not slow"` is the quick tier
# for a change in progress: every module, each matrix as a representative slice (both exporters, both
# dtypes, every variant once), the whole-corpus and end-to-end runs left to the full suite.
# test name -> which of its cases are slow (a predicate on the parameters), or None: all of them.
def _export_slice(p) -> bool:
    return (p["opset"], p["exporter"], p["spec"].dtype) not in {(18, "dynamo", "float32"), (17, "torchscript", "float16")}


SLOW = {
    "test_export_matrix_runs_on_ort_cpu_and_matches_oracle": _export_slice,
    "test_validate_matrix_known_failures": lambda p: (p["dtype"], p["kind"], p["variant"]) not in {
        ("float32", "gn", "native"), ("float16", "gn", "shifted")},
    "test_fp32_accumulation_is_casts_around_the_statistics": lambda p: (p["exporter"], p["kind"]) != ("dynamo", "ln"),
    "test_dynamic_export_runs_at_another_shape": lambda p: p["kind"] != "ln",
    "test_every_file_normonnx_writes_gets_the_umasks_mode": lambda p: p["umask"] != 0o027,  # one umask quickly
    "test_a_norm_validates_with_finished_comparisons": lambda p: p["kind"] != "ln",  # each runtime once quickly
    "test_checking_onnx_files_needs_no_torch": lambda p: p["args"][0] == "fix",  # fix: 4 s of candidate forms
    "test_detections_match_the_corpus": lambda p: True,
    "test_fix_repairs_and_scan_agrees": lambda p: True,
    "test_malformed_line_is_named_skipped_by_report_refused_by_merge_rerun_by_resume": lambda p: True,
    **dict.fromkeys([
        "test_matrix_records_every_case_once", "test_when_fix_passes_scan_passes_over_the_corpus",
        "test_records_cover_baselines_and_every_variant", "test_readme_export_command_as_typed",
        "test_the_readme_tour_prints_what_the_readme_shows",
        "test_scan_of_a_20000_node_model_finishes", "test_parallel_jobs_record_the_same_cases",
        "test_sweep_with_bench_times_and_recommends_the_fastest", "test_diffusers_unet_groupnormalization_fixed",
        "test_assert_export_matches_raises_with_worst_element", "test_a_poisoned_cache_entry_is_a_miss_and_a_warning",
        "test_fix_streams_the_weights_and_leaves_the_input_as_it_was", "test_save_inputs_replays",
        "test_two_sweeps_racing_for_one_folder_record_each_case_once",
        "test_massive_activations_pass_in_float32_and_break_in_float16",
        "test_offset_error_is_unavoidable_not_a_failure_for_centered_variance",
        "test_ort_instance_norm_constant_input_at_a_realistic_size", "test_parallel_validation_gives_the_same_verdicts",
        "test_an_edited_reference_module_is_exported_afresh",
        "test_layernorm_trick_is_exact_on_zero_variance_groups_where_instance_norm_is_not",
        "test_the_ci_example_in_the_python_api_doc_passes_as_written",
        # 2-4 s each, end to end (a sweep, a corpus, a browser, a second process): the quick tier's 60 s
        "test_a_sweep_across_runtimes_recommends_per_runtime_and_marks_portable_forms",
        "test_conformance_single_op_models_are_found_and_validated", "test_a_second_writer_is_refused_at_once",
        "test_list_precision_on_the_command_line", "test_the_one_screen_check_fails_when_the_table_is_longer",
        "test_the_answer_for_seven_runtimes_fits_one_screen",
        "test_diffusers_unet_after_ort_optimizer_shows_its_group_norms", "test_cli_sweep_and_report",
        "test_the_whole_matrix_fits_1400_px", "test_bench_times_openvino_beside_copy_and_torch",
        "test_shifted_gn_passes_constant_large_on_openvino_where_the_layernorm_trick_fails",
    ]),
}


SLOW_FIXTURES = {"full", "report_file"}  # whole-matrix sweeps (30-60 s to build): every test on them is slow


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = getattr(item, "originalname", item.name)
        params = getattr(getattr(item, "callspec", None), "params", {})
        if (name in SLOW and (SLOW[name] is None or SLOW[name](params))) or SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)

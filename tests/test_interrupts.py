"""Ctrl-C and SIGTERM end every command within seconds: one line, exit 130 / 143, no traceback, no hang,
no worker (or its children) left running, nothing half-written, the folder's lock released, and
`sweep --resume` loses nothing. Each command runs in a session of its own, as from a terminal, and the
signal goes to its whole process group, as a terminal's Ctrl-C does."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import corpus

pytestmark = pytest.mark.slow

STOP_WITHIN_S = 8.0  # the command's own cleanup takes ~2 s (workers get 2 s to leave); never the 10-s watchdog


class Command:
    """A normonnx command in a new session, its stderr read line by line as it comes."""

    def __init__(self, *args: str, cwd: Path):
        # cwd outside the checkout: `python -m` puts the working folder first on sys.path, and the
        # checkout's normonnx/ (without normonnx.models, which is installed from models/) would shadow
        # the installed package, as it does in CI's non-editable install
        env = {**os.environ, "COLUMNS": "200"}
        self.proc = subprocess.Popen([sys.executable, "-m", "normonnx.presentation.cli", *args], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: list[str] = []
        self.out: list[str] = []
        threading.Thread(target=self._read, args=(self.proc.stderr, self.lines), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True).start()

    @staticmethod
    def _read(stream, into):
        for line in stream:
            into.append(line.rstrip("\n"))

    def wait_for(self, needle: str, count: int = 1, timeout: float = 240.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if sum(needle in line for line in self.lines) >= count:
                return
            if self.proc.poll() is not None:
                pytest.fail(f"the command ended before {needle!r}: {self.lines[-5:]} {self.out[-5:]}")
            time.sleep(0.05)
        pytest.fail(f"no {needle!r} within {timeout} s: {self.lines[-5:]}")

    def descendants(self) -> set[int]:
        """Every live process below this command (workers and theirs), from /proc."""
        parent = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                    parent[int(d.name)] = int(fields[1])
                except (OSError, IndexError, ValueError):
                    continue
        found, frontier = set(), {self.proc.pid}
        while frontier:
            frontier = {p for p, pp in parent.items() if pp in frontier} - found
            found |= frontier
        return found

    def interrupt(self, sig=signal.SIGINT) -> tuple[int, float, set[int]]:
        """Send `sig` to the command's process group (a terminal's Ctrl-C); (exit code, seconds to stop, the
        descendants it had)."""
        kids = self.descendants()
        t0 = time.monotonic()
        os.killpg(self.proc.pid, sig)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            pytest.fail(f"still running 30 s after {sig!r}: {self.lines[-5:]}")
        return code, time.monotonic() - t0, kids


def assert_stopped_cleanly(cmd: Command, code: int, seconds: float, kids: set[int], want: int) -> None:
    time.sleep(0.3)  # let the readers take the last lines
    text = "\n".join(cmd.lines + cmd.out)
    assert code == want, (code, text[-2000:])
    assert seconds < STOP_WITHIN_S, f"took {seconds:.1f} s to stop"
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in cmd.lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: interrupted"), cmd.lines[-6:]
    # no worker (nor anything a worker started) outlives the command
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in kids):
        time.sleep(0.1)
    assert not [p for p in kids if _alive(p)], f"left running: {[p for p in kids if _alive(p)]}"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# sixteen cases, two at a time: at "3/" thirteen are left (~2 s of work), several of them in flight. The
# TorchScript exporter: each process starts exporting in ~0.3 s instead of dynamo's ~3 s (importing torch._dynamo
# and onnxscript), and what is tested here is how the command stops, not what it exports
SWEEP = ("sweep", "--norms", "ln,bn", "--variants", "native,decomposed", "--opsets", "17,18", "--exporters", "torchscript",
         "--dtypes", "float32,float16", "--inputs", "normal,offset", "--jobs", "2", "--no-cache")


def _check_folder(out: Path) -> None:
    """Every line whole, the lock free: a second writer can take the folder at once."""
    from normonnx.core.results import RESULTS, FolderLock, read_results

    _, bad = read_results(out / RESULTS)
    assert not bad, bad
    with FolderLock(out):
        pass
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("moment, sig, want", [
    ("starting", signal.SIGINT, 130),  # while the workers are being spawned
    ("1/", signal.SIGINT, 130),  # after the first case is on disk, others in flight
    ("3/", signal.SIGTERM, 143),
])
def test_sweep_stops_at_once_and_resume_loses_nothing(tmp_path, moment, sig, want):
    out = tmp_path / "o"
    cmd = Command(*SWEEP, "-o", str(out), cwd=tmp_path)
    cmd.wait_for("sweeping" if moment == "starting" else moment)
    code, seconds, kids = cmd.interrupt(sig)
    assert_stopped_cleanly(cmd, code, seconds, kids, want)
    assert "rerun with --resume" in "\n".join(cmd.lines)
    _check_folder(out)
    from normonnx.core.results import RESULTS, read_results

    before = {r["case_id"]: r["status"] for r in read_results(out / RESULTS)[0]}
    # resumed in one process (--jobs 1: no workers to spawn), as a user may finish it
    done = subprocess.run([sys.executable, "-m", "normonnx.presentation.cli", *SWEEP, "-o", str(out), "--resume",
                           "--jobs", "1"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-1500:]
    after = {r["case_id"]: r["status"] for r in read_results(out / RESULTS)[0]}
    assert len(after) == 16 and all(after[k] == v for k, v in before.items())  # every case once, none lost


def test_scan_validate_in_parallel_stops_at_once(tmp_path):
    from test_gates import five_lns

    cmd = Command("scan", str(five_lns(tmp_path / "m.onnx")), "--validate", "--jobs", "2", cwd=tmp_path)
    cmd.wait_for("validating")
    code, seconds, kids = cmd.interrupt()
    assert_stopped_cleanly(cmd, code, seconds, kids, 130)


def test_scan_activations_stops_at_once_while_what_ifs_run_beside(tmp_path):
    """The capture session's thread and the float16 what-ifs' threads end with the command: one line, exit 130."""
    import numpy as np

    model = tmp_path / "decoder.onnx"
    corpus.external_decoder(model, hidden=256, layers=4, vocab=512, seq=64)
    data = tmp_path / "ids.npz"
    np.savez(data, input_ids=np.random.default_rng(0).integers(0, 512, (1000, 1, 64)))
    cmd = Command("scan", str(model), "--activations", "--data", str(data), cwd=tmp_path)
    cmd.wait_for("activations 2/")
    code, seconds, kids = cmd.interrupt()
    assert_stopped_cleanly(cmd, code, seconds, kids, 130)


@pytest.mark.parametrize("moment", ["validating", "later"])
def test_fix_stops_at_once_and_leaves_nothing_at_the_output(tmp_path, moment):
    # six layers: stopped at the first layer's validation, or once the candidate forms are being tried, there is
    # always work left (two layers, as this once was, could finish before the signal on a busy machine: CI saw it)
    src = corpus.gn_silu_stack(tmp_path / "gn.onnx", 6)
    cmd = Command("fix", str(src), "-o", str(tmp_path / "fixed.onnx"), cwd=tmp_path)
    cmd.wait_for("validating 1/" if moment == "validating" else "validating 6/6")  # later: trying candidate forms
    code, seconds, kids = cmd.interrupt()
    assert_stopped_cleanly(cmd, code, seconds, kids, 130)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gn.onnx"]  # no output, no staging folder


def test_a_signal_while_workers_are_spawned_waits_until_they_have_started():
    """Ctrl-C half-way through a worker's launch left it reading an empty pipe (multiprocessing's traceback on
    the terminal, seen in CI): while spawning, the signal is held and handled, by the handler that was there, on
    the way out -- never inside."""
    from normonnx.engine.pool import spawning

    reached = []
    other = threading.Thread(target=time.sleep, args=(5,), daemon=True)  # a thread that does not block it (the
    other.start()  # executor's own): the terminal's signal can land there while the main thread spawns
    with pytest.raises(KeyboardInterrupt):
        with spawning():
            signal.pthread_kill(other.ident, signal.SIGINT)
            time.sleep(0.2)  # long past the next instruction, where Python would have raised
            reached.append("spawned")
    assert reached == ["spawned"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back

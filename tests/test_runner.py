"""Stage entry points (runner.run): a finished stage process skips the interpreter's teardown but
keeps what an exit must do; errors exit 2 with one line; in-process callers get a normal return."""
import subprocess
import sys
import textwrap

from anomaly_backbones.runner import run

STAGE = textwrap.dedent("""
    import atexit, sys, threading, time
    from pathlib import Path
    from anomaly_backbones.errors import UserError
    from anomaly_backbones.runner import run

    def main():
        atexit.register(lambda: Path("atexit.txt").write_text("ran"))
        print("x" * 100_000)                    # block-buffered into a pipe: must be flushed
        if sys.argv[1] == "thread":             # a non-daemon thread still writing: waited for
            threading.Thread(target=lambda: (time.sleep(0.3), Path("thread.txt").write_text("done"))).start()
        if sys.argv[1] == "error":
            raise UserError("bad param `padim.d`")
        if sys.argv[1] == "full":               # the kernel's ENOSPC: writes to /dev/full always fail with it
            with open("/dev/full", "wb") as f:
                f.write(b"x" * 10)

    if __name__ == "__main__":
        run(main)
        Path("after_run.txt").write_text("the normal exit path")
""")


def _stage(tmp_path, mode):
    (tmp_path / "stage.py").write_text(STAGE)
    return subprocess.run([sys.executable, "stage.py", mode], cwd=tmp_path, capture_output=True, text=True)


def test_a_finished_stage_exits_0_with_output_flushed_and_exit_handlers_run(tmp_path):
    r = _stage(tmp_path, "ok")
    assert r.returncode == 0 and r.stdout == "x" * 100_000 + "\n", r.stderr
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    assert not (tmp_path / "after_run.txt").exists()     # the process ended inside run()


def test_a_live_thread_keeps_the_normal_exit(tmp_path):
    r = _stage(tmp_path, "thread")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "thread.txt").read_text() == "done" and (tmp_path / "after_run.txt").exists()


def test_a_user_error_exits_2_with_one_line(tmp_path):
    r = _stage(tmp_path, "error")
    assert r.returncode == 2 and r.stderr == "error: bad param `padim.d`\n"
    assert (tmp_path / "atexit.txt").read_text() == "ran"


def test_a_full_disk_exits_2_with_one_line(tmp_path):
    r = _stage(tmp_path, "full")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no space left on the disk" in r.stderr, r.stderr


def test_in_process_callers_get_a_normal_return():
    called = []
    run(lambda: called.append(1))   # not this process's script: returns instead of ending pytest
    assert called == [1]

"""Run tool scripts as separate processes that share one warm import of torch and the package.

    python tests/tools/run_warm.py CASES.json

``CASES.json`` holds a list of ``{"script", "argv", "cwd", "out"}`` (and optionally ``"timeout"``, seconds). Each case runs in a child
forked from this process, exactly as ``python script *argv`` would run it (``runpy`` with
``run_name="__main__"``, a traceback and status 1 for an uncaught exception), with stdout and
stderr in ``out.stdout`` / ``out.stderr`` and the exit status in ``out.rc``.

Why: a cold ``python tools/train.py`` spends ~6 s of CPU importing torch and timm before it can
fail on a bad argument; forking a warm process costs milliseconds, so a test can check a dozen
error cases end to end in the time of one. Not a test module.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys
import traceback

# What the tools import; loaded once here, inherited by every child.
import actionrec.build  # noqa: F401
import actionrec.cli  # noqa: F401
import actionrec.engine.loop  # noqa: F401
import actionrec.engine.optim  # noqa: F401
import actionrec.engine.plots  # noqa: F401
import actionrec.engine.tracking  # noqa: F401


def _child(case: dict) -> int:
    if case.get("timeout"):
        signal.alarm(int(case["timeout"]))  # a case that hangs is killed (exit status -14), not waited on
    for fd, suffix in ((1, ".stdout"), (2, ".stderr")):
        out = os.open(case["out"] + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, fd)
        os.close(out)
    os.chdir(case["cwd"])
    sys.argv = [case["script"], *case["argv"]]
    sys.path[0] = os.path.dirname(os.path.abspath(case["script"]))  # as `python script` sets it
    try:
        runpy.run_path(case["script"], run_name="__main__")
        return 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
        traceback.print_exc()
        return 1


def main() -> None:
    cases = json.loads(open(sys.argv[1]).read())
    for case in cases:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(case)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        with open(case["out"] + ".rc", "w") as f:
            f.write(str(code))


if __name__ == "__main__":
    main()

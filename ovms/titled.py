"""`python -m ovms.titled TITLE MODULE [ARGS…]`: `python -m MODULE ARGS…` under the process title TITLE.

The supervisor (ovms.all_in_one) starts its children this way, so that `ps` and `top` tell them apart by
what they are (`ovms worker CPU`, `ovms api 1/4 grpc:9178 rest:8000`, `ovms flower 127.0.0.1:5555`) rather than
`python3 -m ovms worker …` with flags. setproctitle rewrites the process's argv memory (not its
environment's), so /proc/<pid>/cmdline shows the title too. A role started by hand keeps the command
line it was given: the container healthcheck (ovms.healthcheck) reads its flags from PID 1's.
"""

from __future__ import annotations

import os
import runpy
import sys


def main(argv: list[str]) -> None:
    title, module, *arguments = argv
    # setproctitle would otherwise grow the title over the environment's memory, blanking
    # /proc/<pid>/environ (which tests and operators read); the title fits in argv, which holds it.
    os.environ["SPT_NOENV"] = "1"
    from setproctitle import setproctitle

    setproctitle(title)
    sys.argv = [module, *arguments]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])

"""What the Python benchmarks (scripts/bench-recovery, scripts/bench-remote)
share: bounded integer settings from the environment, scripts/soak loaded as
a module (its processes, HTTP helpers and login script), and a process's
tree from /proc."""

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def env_int(script, name, default, low, high):
    """`name` from the environment (else `default`); exits naming the
    setting unless it is an integer from `low` to `high`."""
    text = os.environ.get(name, str(default))
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        sys.exit(f"{script}: {name} must be an integer from {low} to {high}, not {text!r}")
    return value


def load_soak(work):
    """scripts/soak as a module, its processes logging under `work` and
    its provider's access tokens long enough that nothing refreshes."""
    loader = importlib.machinery.SourceFileLoader("soak", str(ROOT / "scripts" / "soak"))
    spec = importlib.util.spec_from_loader("soak", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    module.WORK = work  # its processes log here, its Farm reads the admin token here
    module.ACCESS_TTL = 3600  # no refresh of its own during the run
    return module


def children_map():
    """Each pid's children, from /proc."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            # the command may hold spaces and parentheses: fields after the last ')'
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pid):
    """`pid` and all its descendants."""
    kids, out, todo = children_map(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out

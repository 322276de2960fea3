"""Runs one model-written solution and its tests in a child process. Not imported by tameshi.

code_runner.py copies this file into a fresh temporary folder and runs it as
`python -I -S -X utf8 harness.py` there, with an empty environment. Before the solution runs, this file:
  1. lowers its own resource limits, hard and soft, so the solution cannot raise them again
     (done here rather than in a preexec_fn: the parent may run torch threads, and fork-then-Python
     in a threaded parent can deadlock);
  2. installs an audit hook (PEP 578; it cannot be removed) that refuses sockets, DNS, new processes,
     ctypes, opening or changing files outside the folder, and reading files outside the folder
     except Python's own installation (imports must work).
Results go to the real stdout as one line starting with a nonce the parent sent on stdin, so that
a solution printing a fake result line cannot pass itself.
"""

import json
import os
import resource
import sys

LIMITS = json.loads(sys.argv[1])
for name, value in LIMITS.items():
    resource.setrlimit(getattr(resource, name), (value, value))

NONCE = sys.stdin.readline().strip()
ROOT = os.path.realpath(os.getcwd())
# Readable besides the folder: the standard library's folders only (site-packages is not on the path
# under -S, so neither tameshi's checkout nor anything else installed can be read).
READABLE = tuple(os.path.realpath(p) for p in sys.path if p and os.path.isabs(p))
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
DENY_PREFIXES = ("socket.", "subprocess.", "ctypes.", "os.exec", "os.spawn", "os.posix_spawn", "os.fork")
DENY = {"os.system", "os.forkpty", "os.kill", "os.killpg", "pty.spawn", "os.startfile", "webbrowser.open"}
PATH_EVENTS = {
    "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link", "os.symlink",
    "os.truncate", "os.utime", "os.chdir", "shutil.rmtree", "shutil.move",
    "shutil.copyfile", "shutil.copymode", "shutil.copystat", "os.chflags", "os.setxattr", "os.removexattr",
}  # fmt: skip
LIST_EVENTS = {"os.listdir", "os.scandir"}  # reading a folder: imports list Python's own folders
blocked = []
_write, _realpath, _fsdecode = os.write, os.path.realpath, os.fsdecode


def _under(path, roots):
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _deny(what):
    blocked.append(what)
    raise PermissionError(f"sandbox: {what} is not allowed")


def _hook(event, args):
    if event == "open":
        path, mode, flags = args
        if path is None or isinstance(path, int):
            return  # an already-open descriptor
        real = _realpath(_fsdecode(path))
        writes = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & WRITE_FLAGS)
        if _under(real, (ROOT,)) or (not writes and _under(real, READABLE)):
            return
        _deny(f"open to {'write' if writes else 'read'} {real!r}")  # the verb first: evidence is clipped
    elif event in DENY or event.startswith(DENY_PREFIXES):
        _deny(f"{event}{args!r:.80}")
    elif event in PATH_EVENTS or event in LIST_EVENTS:
        allowed = (ROOT, *READABLE) if event in LIST_EVENTS else (ROOT,)
        for a in args:
            if isinstance(a, str | bytes | os.PathLike) and not _under(_realpath(_fsdecode(a)), allowed):
                _deny(f"{event}({_fsdecode(a)!r})")


def _result(**fields):
    _write(1, (NONCE + json.dumps(fields) + "\n").encode())


def main():
    function, tests = json.loads(sys.argv[2]), json.loads(sys.argv[3])
    sys.addaudithook(_hook)
    with open("solution.py", encoding="utf-8") as f:
        source = f.read()
    namespace = {"__name__": "solution"}  # not "__main__": demo code under the main guard stays quiet
    module_error = None
    try:
        exec(compile(source, "solution.py", "exec"), namespace)
    except BaseException as e:  # the solution's failure is the result, whatever it is
        module_error = f"{type(e).__name__}: {e}"[:200]
    results = []
    if callable(namespace.get(function)):
        for test in tests:
            try:
                exec(compile(test, "test", "exec"), namespace)
                results.append([test, True, None])
            except BaseException as e:
                results.append([test, False, f"{type(e).__name__}: {e}"[:160]])
    _result(
        defined=callable(namespace.get(function)), module_error=module_error, tests=results, blocked=blocked
    )


main()

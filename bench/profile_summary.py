"""Summarise a py-spy ``--format raw`` profile (collapsed stacks).

    python -m bench.profile_summary PROFILE.txt [--top 25] [--match flask_atmosphere]

Prints, as percentages of all samples:

* *self*: the innermost frame of each sample (the function on the CPU);
* *inclusive*: every function that appears anywhere in a sample's stack
  (counted once per sample), i.e. the time spent in it and in what it calls.

Frames are named ``function (file)`` without line numbers, so every line of a
function counts together; with ``--lines``, ``function (file:N)`` where N is
the line of the function's ``def`` (read from the source file, when it is
still there), and a third list, the lines that take the most self time
(``file:N`` of the innermost frame). Idle samples (py-spy marks them when run
with ``--idle``) are left out; ``--source DIR`` says where the profiled
files are (py-spy names them relative to ``sys.path``; a ``--rev`` run's
are in its snapshot). Paths are shortened to what follows
``site-packages/``, the Python library folder, a ``--rev`` snapshot's folder
or the repository's root.
"""
from __future__ import annotations

import argparse
import ast
import functools
import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*?)(?::(?P<line>\d+))?\)$")
_SNAPSHOT = re.compile(r"^.*/bench-snapshots/[0-9a-f]+/")
_ROOT = str(Path(__file__).resolve().parent.parent) + "/"


def short_path(path: str) -> str:
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    path = _SNAPSHOT.sub("", path)
    return path[len(_ROOT):] if path.startswith(_ROOT) else path


#: where the relative paths of py-spy's frames are looked for (``--source``
#: first, then ``sys.path``)
SOURCES: list[str] = []


def _source(path: str) -> Path | None:
    if Path(path).is_absolute():
        return Path(path)
    for root in SOURCES + [p or "." for p in sys.path]:
        candidate = Path(root) / path
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=None)
def _functions(path: str) -> list[tuple[int, int, str]]:
    """(first line, last line, name) of every function in a source file."""
    source = _source(path)
    try:
        tree = ast.parse(source.read_text()) if source else None
    except (OSError, SyntaxError, ValueError):
        return []
    if tree is None:
        return []
    return [(node.lineno, node.end_lineno or node.lineno, node.name) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def def_line(path: str, func: str, line: int) -> int | None:
    """The line of the ``def`` of ``func`` (a qualified name) that holds
    ``line`` in ``path``: the innermost such function."""
    name = func.rsplit(".", 1)[-1]
    found = [(first, last) for first, last, n in _functions(path)
             if n == name and first <= line <= last]
    return max(found)[0] if found else None


def frame_name(frame: str, lines: bool = False) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path, func = match.group("file"), match.group("func")
    if lines and match.group("line"):
        first = def_line(path, func, int(match.group("line")))
        if first is not None:
            return f"{func} ({short_path(path)}:{first})"
    return f"{func} ({short_path(path)})"


def frame_line(frame: str) -> str:
    """``function (file:N)``, N the line the frame was on."""
    match = _FRAME.match(frame.strip())
    if not match or not match.group("line"):
        return frame.strip()
    return f"{match.group('func')} ({short_path(match.group('file'))}:{match.group('line')})"


def load(path: str, lines: bool = False) -> tuple[Counter, Counter, int]:
    own, inclusive, _, total = load_lines(path, lines)
    return own, inclusive, total


def load_lines(path: str, lines: bool = False) -> tuple[Counter, Counter, Counter, int]:
    """Self and inclusive samples per function, self samples per line, and
    the number of samples."""
    own: Counter = Counter()
    inclusive: Counter = Counter()
    hot: Counter = Counter()
    total = 0
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            try:
                n = int(count)
            except ValueError:
                continue
            raw = [part for part in stack.split(";") if part]
            frames = [frame_name(part, lines) for part in raw]
            if frames and frames[0].startswith("process "):
                frames, raw = frames[1:], raw[1:]  # py-spy's process/thread prefix
            if not frames:
                continue
            total += n
            own[frames[-1]] += n
            hot[frame_line(raw[-1])] += n
            for name in set(frames):
                inclusive[name] += n
    return own, inclusive, hot, total


def report(path: str, top: int = 25, match: str | None = None, lines: bool = False) -> str:
    own, inclusive, hot, total = load_lines(path, lines)
    if not total:
        return f"no samples in {path}"
    lines_out = [f"{total} samples from {path}", "", f"top {top} by self time:"]
    for name, n in own.most_common(top):
        lines_out.append(f"  {100 * n / total:5.1f}%  {name}")
    lines_out += ["", f"top {top} by inclusive time"
                  + (f" (matching {match!r})" if match else "") + ":"]
    shown = 0
    for name, n in inclusive.most_common():
        if match and match not in name:
            continue
        lines_out.append(f"  {100 * n / total:5.1f}%  {name}")
        shown += 1
        if shown >= top:
            break
    if lines:
        lines_out += ["", f"top {top} lines by self time:"]
        for name, n in hot.most_common(top):
            lines_out.append(f"  {100 * n / total:5.1f}%  {name}")
    return "\n".join(lines_out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_summary", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", default=None,
                        help="only show inclusive entries whose name contains this")
    parser.add_argument("--lines", action="store_true",
                        help="name functions with the line of their def, and list the lines "
                             "that take the most self time")
    parser.add_argument("--source", action="append", default=[], metavar="DIR",
                        help="with --lines, look for the profiled files here first (e.g. "
                             "the --rev snapshot, $TMPDIR/bench-snapshots/COMMIT)")
    args = parser.parse_args(argv)
    SOURCES[:] = args.source
    print(report(args.profile, args.top, args.match, args.lines))


if __name__ == "__main__":
    main()

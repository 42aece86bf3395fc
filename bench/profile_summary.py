"""Summarise a py-spy ``--format raw`` profile (collapsed stacks).

    python -m bench.profile_summary PROFILE.txt [--top 25] [--match flask_atmosphere]

Prints, as percentages of all samples:

* *self*: the innermost frame of each sample (the function on the CPU);
* *inclusive*: every function that appears anywhere in a sample's stack
  (counted once per sample), i.e. the time spent in it and in what it calls.

Frames are named ``function (file)`` without line numbers, so every line of a
function counts together. Idle samples (py-spy marks them when run with
``--idle``) are left out.
"""
from __future__ import annotations

import argparse
import re
from collections import Counter

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match.group('func')} ({path})"


def load(path: str) -> tuple[Counter, Counter, int]:
    own: Counter = Counter()
    inclusive: Counter = Counter()
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
            frames = [frame_name(part) for part in stack.split(";") if part]
            if frames and frames[0].startswith("process "):
                frames = frames[1:]  # py-spy's process/thread prefix
            if not frames:
                continue
            total += n
            own[frames[-1]] += n
            for name in set(frames):
                inclusive[name] += n
    return own, inclusive, total


def report(path: str, top: int = 25, match: str | None = None) -> str:
    own, inclusive, total = load(path)
    lines = [f"{total} samples from {path}", "", f"top {top} by self time:"]
    for name, n in own.most_common(top):
        lines.append(f"  {100 * n / total:5.1f}%  {name}")
    lines += ["", f"top {top} by inclusive time" + (f" (matching {match!r})" if match else "") + ":"]
    shown = 0
    for name, n in inclusive.most_common():
        if match and match not in name:
            continue
        lines.append(f"  {100 * n / total:5.1f}%  {name}")
        shown += 1
        if shown >= top:
            break
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_summary", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", default=None,
                        help="only show inclusive entries whose name contains this")
    args = parser.parse_args(argv)
    print(report(args.profile, args.top, args.match))


if __name__ == "__main__":
    main()

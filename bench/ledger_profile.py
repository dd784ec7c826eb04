"""Summarise py-spy raw profiles (collapsed stacks, `py-spy record -f raw`), as bench-ledger writes them with
BENCH_PYSPY_DIR set.

    .venv/bin/python bench/ledger_profile.py FILE [--under FUNCTION] [--top N]

Prints, as shares of all samples (py-spy's default samples only threads that are running, so idle time
waiting on the network or a lock shows up as frames in socket/psycopg waits only with --idle):

- inclusive: the functions of the app (wallet/, tenants/) and a few library hot spots, by the share of
  samples they are on the stack;
- self: the innermost frames, grouped by file, where the CPU is actually spent.

With --under FUNCTION only the samples whose stack passes through FUNCTION (e.g. transfers_execute) count.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def parse(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack_text, _, count = line.rpartition(" ")
        frames = []
        for frame in stack_text.split(";"):
            match = _FRAME.match(frame.strip())
            if match:
                frames.append((match.group("func"), match.group("file")))
            else:
                frames.append((frame.strip(), ""))
        stacks.append((frames, int(count)))
    return stacks


def short(file: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def is_app(file: str) -> bool:
    name = short(file)
    return name.startswith(("wallet/", "tenants/"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--under", help="only samples whose stack contains this function name")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    stacks = [s for path in args.files for s in parse(path)]
    if args.under:
        stacks = [(frames, n) for frames, n in stacks if any(f == args.under for f, _ in frames)]
    total = sum(n for _, n in stacks) or 1
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    self_module: Counter[str] = Counter()
    for frames, n in stacks:
        seen = set()
        for func, file in frames:
            if is_app(file) or func in {"bulk_create", "execute", "_execute_sql", "__init__", "from_db",
                                        "get_db_prep_save", "save", "commit", "fetchall", "wait"}:
                key = f"{func} ({short(file)})"
                if key not in seen:
                    seen.add(key)
                    inclusive[key] += n
        func, file = frames[-1]
        self_time[f"{func} ({short(file)})"] += n
        module = short(file).split("/")[0] if "/" in short(file) else short(file)
        self_module[module] += n
    print(f"{total} samples" + (f" under {args.under}" if args.under else ""))
    print("inclusive (app functions and selected library frames):")
    for key, n in inclusive.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%  {key}")
    print("self (innermost frame):")
    for key, n in self_time.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%  {key}")
    print("self by package:")
    for key, n in self_module.most_common(12):
        print(f"  {100 * n / total:5.1f}%  {key}")


if __name__ == "__main__":
    main()

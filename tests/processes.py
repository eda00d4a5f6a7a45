"""The process tree, read from ``/proc`` (Linux): what the tests of loader workers and killed trainers look at."""

from __future__ import annotations

from pathlib import Path


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (state first, then the parent's pid)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def parent_of(pid: int) -> int:
    return int(_stat(pid)[1])


def children_by_parent() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out.setdefault(parent_of(int(entry.name)), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):  # the process ended while being read
                continue
    return out


def descendants(pid: int, children: dict[int, list[int]] | None = None) -> set[int]:
    children = children_by_parent() if children is None else children
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


def alive(pid: int) -> bool:
    try:
        return _stat(pid)[0] != "Z"  # a zombie is dead; only its parent's reaping is left
    except OSError:
        return False

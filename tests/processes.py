"""Processes seen through /proc, for the tests that kill a launched unit and check that nothing it started is left."""

from __future__ import annotations

from pathlib import Path


def processes_naming(word: str) -> dict[int, str]:
    """Live processes (not zombies) whose command line contains ``word``: pid → command line."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            continue
        if proc.name.isdigit() and word in cmdline and state != "Z":
            found[int(proc.name)] = cmdline
    return found

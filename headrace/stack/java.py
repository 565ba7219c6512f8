"""Find a Java runtime new enough for a service."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

from headrace.errors import StackError

_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?')


@cache
def java_major(java: Path) -> int | None:
    """The major version of the ``java`` executable at ``java``, or None."""
    try:
        out = subprocess.run(  # noqa: S603 - a fixed argv
            [str(java), "-version"], capture_output=True, text=True, timeout=30, check=False
        ).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _VERSION.search(out)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8" is Java 8


def candidates(java_home: Path | None) -> list[Path]:
    """Java executables in order of preference: setting, JAVA_HOME, PATH, /usr/lib/jvm."""
    found: list[Path] = []
    for home in (java_home, Path(os.environ["JAVA_HOME"]) if os.environ.get("JAVA_HOME") else None):
        if home is not None:
            found.append(home / "bin" / "java")
    on_path = shutil.which("java")
    if on_path:
        found.append(Path(on_path))
    found.extend(sorted(Path("/usr/lib/jvm").glob("*/bin/java")))
    unique: list[Path] = []
    for path in found:
        if path.exists() and path.resolve() not in {u.resolve() for u in unique}:
            unique.append(path)
    return unique


def find_java(service: str, minimum: int, java_home: Path | None = None) -> Path:
    """The first Java of at least version ``minimum``, or one clear StackError."""
    seen = []
    for java in candidates(java_home):
        major = java_major(java)
        if major is not None and major >= minimum:
            return java
        seen.append(f"Java {major} at {java}")
    have = "; found " + ", ".join(seen) if seen else "; no Java is installed"
    raise StackError(
        service,
        f"needs Java {minimum} or newer{have}. Install a JDK {minimum}+ "
        "or point HEADRACE_STACK__JAVA_HOME at one",
    )

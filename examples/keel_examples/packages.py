"""A LearnPack package registry on disk that honours idempotency keys, so a package is published once.

The registry is a folder: one sub-folder per package (learn.json, README.md) and `publications.jsonl`,
an append-only ledger with one line per publication. The ledger line is the commit point: a publish that
finds its idempotency key in the ledger returns what was published then and changes nothing, and one that
died after writing the files but before its line simply writes the same files again. A file lock makes
two executions of the same call (a retry racing a worker presumed dead) take turns.
"""

import fcntl
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LEDGER = "publications.jsonl"


class PackageRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root

    def publish(
        self, title: str, markdown: str, *, idempotency_key: str, agent_run_id: str
    ) -> dict[str, Any]:
        """Publish a lesson as package `<slug>`, a new version of it if it exists; once per idempotency key."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            ledger = self.publications()
            for publication in ledger:
                if publication["idempotency_key"] == idempotency_key:
                    return publication["result"]
            slug = slug_of(title)
            version = 1 + sum(1 for p in ledger if p["result"]["slug"] == slug)
            folder = self.root / slug
            folder.mkdir(exist_ok=True)
            manifest = {"title": title, "slug": slug, "version": version, "agent_run_id": agent_run_id}
            _write_atomically(folder / "README.md", markdown)
            _write_atomically(folder / "learn.json", json.dumps(manifest, indent=2) + "\n")
            result = {
                "slug": slug,
                "version": version,
                "path": str(folder),
                "files": ["learn.json", "README.md"],
            }
            self._append(
                {
                    "idempotency_key": idempotency_key,
                    "agent_run_id": agent_run_id,
                    "published_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "result": result,
                }
            )
            return result

    def publications(self) -> list[dict[str, Any]]:
        """Every publication so far, oldest first."""
        try:
            lines = (self.root / LEDGER).read_text().splitlines()
        except FileNotFoundError:
            return []
        publications = []
        for line in lines:
            try:
                publications.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a crash mid-write: that publication never committed
        return publications

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.root / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _append(self, publication: dict[str, Any]) -> None:
        with (self.root / LEDGER).open("a+") as ledger:
            # After a line cut short, start on a line of our own.
            ledger.seek(0, os.SEEK_END)
            if ledger.tell() > 0:
                ledger.seek(ledger.tell() - 1)
                if ledger.read(1) != "\n":
                    ledger.write("\n")
            ledger.write(json.dumps(publication) + "\n")
            ledger.flush()
            os.fsync(ledger.fileno())


def slug_of(title: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return slug[:60] or "lesson"


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)

"""Output folders written so that nothing is lost (the ``flare-nb`` command, notebook 08).

A run never writes into ``--out`` directly. :class:`StagedOutput`:

1. :meth:`~StagedOutput.check` (before any work) refuses an ``--out`` that cannot be created
   (under a file, read-only, a system folder), that is a file, that holds or is one of the
   input photos, or that is not empty without ``--force``; with ``--force`` the folder must be
   one a previous run wrote (it has the manifest ``.flare-nb-manifest.json``) or hold none of
   the names this run writes;
2. :meth:`~StagedOutput.begin` creates a staging folder beside ``--out``
   (``<out>.flare-nb-incomplete-XXXXXX``: the name says what it is if the process is killed);
   everything is written there;
3. :meth:`~StagedOutput.commit` renames the staging folder to ``--out`` (one atomic rename
   when ``--out`` does not exist or is empty). Into an existing folder (``--force``) it
   replaces exactly the files the previous run listed in its manifest (and nothing else), the
   manifest marked ``"complete": false`` until every file is in place;
4. :meth:`~StagedOutput.abort` (any error, Ctrl-C) removes the staging folder and says what
   state ``--out`` is in.

The manifest lists every file (relative path) one run wrote; :func:`read_manifest` reads it
and :func:`manifest_files` gives the set used to skip a previous run's outputs when a folder
is read as input.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

__all__ = ["MANIFEST", "INCOMPLETE_TAG", "StagedOutput", "read_manifest", "manifest_files", "OutputError"]

MANIFEST = ".flare-nb-manifest.json"
INCOMPLETE_TAG = ".flare-nb-incomplete-"


class OutputError(ValueError):
    """An output folder that cannot be used; the message names it and says what to do."""


def read_manifest(folder) -> dict | None:
    """The manifest of ``folder`` (``{"files": [...], "complete": bool}``), None when it has none
    or it cannot be read."""
    p = Path(folder) / MANIFEST
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        return None
    doc["files"] = [f for f in doc["files"] if isinstance(f, str) and f and not Path(f).is_absolute()
                    and ".." not in Path(f).parts]
    return doc


def manifest_files(folder) -> set[Path]:
    """Absolute paths of the files a previous run wrote into ``folder`` (empty set if none)."""
    doc = read_manifest(folder)
    if doc is None:
        return set()
    root = Path(folder).resolve()
    return {root / f for f in doc["files"]} | {root / MANIFEST}


def _existing_ancestor(p: Path) -> Path:
    p = Path(os.path.abspath(p))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


class StagedOutput:
    """One run's output folder (module docstring). ``inputs``: the input files, never touched."""

    def __init__(self, out, force: bool = False, inputs=()):
        self.out = Path(out)
        self.force = bool(force)
        self.inputs = [Path(p) for p in inputs]
        self.stage: Path | None = None
        self._created_parents: list[Path] = []
        self.old_manifest: dict | None = None
        self._committing = False

    # ------------------------------------------------------------------ checks before any work
    def check(self, names=()) -> None:
        """Raise :class:`OutputError` when ``--out`` cannot be used (module docstring, point 1).
        ``names``: relative paths this run will write (checked against a non-empty folder)."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise OutputError(f"--out {out} is a file, expected a folder (new or empty); choose another --out")
        anc = _existing_ancestor(out)
        if not anc.is_dir():
            raise OutputError(f"--out {out} cannot be created: {anc} is a file, not a folder; choose another --out")
        if not os.access(anc, os.W_OK | os.X_OK):
            raise OutputError(f"--out {out} cannot be created: no permission to write in {anc}; choose another --out")
        root = Path(os.path.abspath(out)).resolve()
        for p in self.inputs:
            rp = p.resolve()
            if rp == root or root in rp.parents:
                raise OutputError(f"--out {out} holds the input photo {p}; flare-nb never writes where its inputs "
                                  "are: choose a new --out folder")
        if not (out.is_dir() and any(out.iterdir())):
            return
        doc = read_manifest(out)
        if doc is not None and not doc.get("complete", False) and not self.force:
            raise OutputError(f"--out {out} holds an INCOMPLETE output of an earlier flare-nb run (it stopped "
                              "while writing); pass --force to replace its files or choose another --out")
        if not self.force:
            raise OutputError(f"output folder {out} already exists and is not empty; pass --force to replace the "
                              "files an earlier flare-nb run wrote there, or choose another --out")
        ours = set(doc["files"]) if doc else set()
        clash = sorted(n for n in names if (out / n).exists() and n not in ours)
        if clash:
            raise OutputError(f"--out {out} holds files flare-nb did not write that this run would replace ("
                              f"{', '.join(clash[:4])}{', ...' if len(clash) > 4 else ''}); --force only replaces "
                              "the files of an earlier run: move them or choose another --out")
        self.old_manifest = doc

    def leftovers(self) -> list[Path]:
        """Staging folders of killed runs beside ``--out`` (reported, never reused)."""
        parent = Path(os.path.abspath(self.out)).parent
        if not parent.is_dir():
            return []
        return sorted(p for p in parent.glob(self.out.name + INCOMPLETE_TAG + "*")
                      if p.is_dir() and p != self.stage)

    # ------------------------------------------------------------------ staging
    def begin(self) -> Path:
        """Create the staging folder beside ``--out`` and return it."""
        parent = Path(os.path.abspath(self.out)).parent
        missing = []
        p = parent
        while not p.exists():
            missing.append(p)
            p = p.parent
        try:
            for q in reversed(missing):
                q.mkdir()
                self._created_parents.append(q)
            self.stage = Path(tempfile.mkdtemp(prefix=self.out.name + INCOMPLETE_TAG, dir=parent))
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(self.stage, 0o777 & ~mask)            # mkdtemp's 0700 -> the usual folder mode
        except OSError as e:
            self._remove_parents()
            raise OutputError(f"--out {self.out} cannot be created ({e.strerror or e}); choose another --out") from None
        return self.stage

    def _remove_parents(self) -> None:
        for q in reversed(self._created_parents):
            try:
                q.rmdir()
            except OSError:
                pass
        self._created_parents = []

    def staged_files(self) -> list[str]:
        return sorted(p.relative_to(self.stage).as_posix() for p in self.stage.rglob("*")
                      if p.is_file() and p.name != MANIFEST)

    def _write_manifest(self, folder: Path, files, complete: bool) -> None:
        (folder / MANIFEST).write_text(json.dumps({"written_by": "flare-nb", "complete": complete,
                                                   "files": sorted(files)}, indent=1) + "\n")

    def commit(self) -> list[str]:
        """Move the staged files into ``--out`` (module docstring, point 3); returns their names."""
        files = self.staged_files()
        out = self.out
        self._write_manifest(self.stage, files, True)
        if not out.exists() or (out.is_dir() and not any(out.iterdir())):
            self._committing = True
            if out.exists():
                out.rmdir()
            os.rename(self.stage, out)
            self.stage = None
            self._committing = False
            return files
        # --force into an earlier run's folder: replace exactly what it listed
        old = set((self.old_manifest or {}).get("files", []))
        self.check(files)
        self._committing = True                                  # the folder may have changed meanwhile
        self._write_manifest(out, old | set(files), False)
        for name in sorted(old - set(files)):
            p = out / name
            if p.is_file() and not p.is_symlink():
                p.unlink()
        for name in files:
            dst = out / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.stage / name, dst)
        for name in sorted(old - set(files), key=lambda n: -len(Path(n).parts)):
            for d in Path(name).parents:
                if str(d) != "." and (out / d).is_dir() and not any((out / d).iterdir()):
                    (out / d).rmdir()
        self._write_manifest(out, files, True)
        shutil.rmtree(self.stage, ignore_errors=True)
        self.stage = None
        self._committing = False
        return files

    def abort(self) -> str:
        """Remove the staging folder; return a sentence on the state of ``--out``."""
        old = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
        try:
            if self.stage is None or self._committing:
                renamed = self.stage is not None and not self.stage.exists()
                if self.stage is not None:
                    shutil.rmtree(self.stage, ignore_errors=True)
                    self.stage = None
                doc = read_manifest(self.out) if self.out.is_dir() else None
                if doc is not None and not doc.get("complete", True):
                    return (f"{self.out} is INCOMPLETE (stopped while its files were replaced; "
                            f"{MANIFEST} says so): run again with --force")
                if renamed and doc is not None:
                    return f"{self.out} had been written completely just before"
                return f"{self.out} was not changed"
            stage, self.stage = self.stage, None
            shutil.rmtree(stage, ignore_errors=True)
            self._remove_parents()
            if stage.exists():
                return f"the partial files in {stage} could not all be removed (INCOMPLETE; delete it); {self.out} was not changed"
            return f"no files were written to {self.out}"
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()

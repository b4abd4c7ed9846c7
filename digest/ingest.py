"""Inbox ingestion: complete dumps become stored papers; bad ones are set aside with the reason.

A dump is taken only when complete: names ending `.part` or `.tmp` and dotfiles are ignored
(writers write `NAME.part` and rename it), and a file must have kept its size and mtime for
`inbox.settle_seconds`. Each dump is stored in one transaction; only after the commit does it
move to `processed/`. A crash at any point leaves it either wholly stored or not at all, and the
re-run finishes the job: content already stored is recognised by its sha256 and just moved on.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError

from digest.config import Settings
from digest.errors import ParseError, StoreError
from digest.fsutil import atomic_write
from digest.models import ParseResult
from digest.progress import progress_bar
from digest.store import RisingRule, Store

log = logging.getLogger(__name__)

IGNORED_SUFFIXES = (".part", ".tmp")
ERROR_SUFFIX = ".error.txt"


class ParseFn(Protocol):
    """The parser's signature (digest.parse.parse_bytes)."""

    def __call__(
        self, data: bytes, *, name: str, mtime: float | None, max_bytes: int | None
    ) -> ParseResult: ...


# Called with a stage name ("parsed", "stored", "moved") and the file; tests inject crashes here.
StageHook = Callable[[str, Path], None]


@dataclass(frozen=True, slots=True)
class FileOutcome:
    """What became of one file.

    status: stored, duplicate (content already stored), failed (bad dump, set aside),
    refused (symlink, odd name: never read), waiting (not settled yet; left for the next run).
    """

    name: str
    status: str
    papers: int = 0
    new_papers: int = 0
    reason: str = ""
    moved_to: Path | None = None
    warnings: tuple[str, ...] = ()  # "NAME:LINE: what", for what the parser doubted


@dataclass
class IngestReport:
    """The outcome of one ingestion run, file by file, with totals and a summary line."""

    outcomes: list[FileOutcome] = field(default_factory=list)
    aborted: str | None = None  # a store failure stopped the run; the rest were left untouched

    def _with(self, *statuses: str) -> list[FileOutcome]:
        return [o for o in self.outcomes if o.status in statuses]

    @property
    def files(self) -> int:
        """Files handled in this run (waiting ones are not)."""
        return len(self.outcomes) - len(self.waiting)

    @property
    def stored(self) -> list[FileOutcome]:
        return self._with("stored")

    @property
    def duplicates(self) -> list[FileOutcome]:
        return self._with("duplicate")

    @property
    def failed(self) -> list[FileOutcome]:
        """Files that failed or were refused, each with its reason."""
        return self._with("failed", "refused")

    @property
    def waiting(self) -> list[FileOutcome]:
        return self._with("waiting")

    @property
    def papers(self) -> int:
        return sum(o.papers for o in self.outcomes)

    @property
    def new_papers(self) -> int:
        return sum(o.new_papers for o in self.outcomes)

    @property
    def warnings(self) -> list[str]:
        """One line per doubt in the files stored (a line skipped, a paper left out)."""
        return [w for o in self.outcomes for w in o.warnings]

    @property
    def failures(self) -> list[str]:
        """One line per failed or refused file (and the abort, if any), for stderr."""
        lines = [
            o.reason if o.reason.startswith(f"{o.name}:") else f"{o.name}: {o.reason}"
            for o in self.failed
        ]
        if self.aborted:
            lines.append(f"ingestion stopped: {self.aborted}")
        return lines

    def summary(self) -> str:
        """One line: files, papers, new papers, duplicates, failed (and waiting, when any)."""
        text = (
            f"{self.files} file{'s' if self.files != 1 else ''}: "
            f"{len(self.stored)} stored, {self.papers} papers ({self.new_papers} new), "
            f"{len(self.duplicates)} duplicate, {len(self.failed)} failed"
        )
        if self.waiting:
            text += f", {len(self.waiting)} still being written"
        if self.aborted:
            text += " (stopped early)"
        return text


@dataclass(frozen=True, slots=True)
class _Job:
    """A file to ingest; `owned` files (in the inbox) are moved afterwards, others left alone."""

    path: Path
    owned: bool
    stat: os.stat_result


class _Run:
    """Settings and injected collaborators shared by every file of one run."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        clock: Callable[[], float],
        parse: ParseFn | None,
        hook: StageHook | None,
    ) -> None:
        self.store = store
        self.inbox = settings.inbox
        rank = settings.rank
        self.rising = RisingRule(rank.rising_min_gain, rank.rising_ratio)
        self.clock = clock
        if parse is None:
            from digest.parse import parse_bytes

            parse = parse_bytes
        self.parse = parse
        self.hook = hook or (lambda _stage, _path: None)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)


# --- public entry points ----------------------------------------------------------------------


def ingest_inbox(
    store: Store,
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    wait: bool = True,
    quiet: bool = False,
    progress: bool | None = None,
    parse: ParseFn | None = None,
    hook: StageHook | None = None,
) -> IngestReport:
    """Ingest every complete dump in the inbox.

    A file whose mtime is at least `settle_seconds` old is complete. With `wait`, fresher files
    are re-checked once their interval has passed (the CLI); without it they are left for the
    next poll (the daemon).
    """
    run = _Run(store, settings, clock=clock, parse=parse, hook=hook)
    inbox = settings.inbox.dir
    report = IngestReport()
    if not inbox.is_dir():
        report.aborted = f"{inbox}: inbox folder does not exist (create it or run `digest init`)"
        return report
    candidates: list[Path] = []
    with os.scandir(inbox) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if _ignored(entry.name) or entry.is_dir(follow_symlinks=False):
                continue
            candidates.append(Path(entry.path))
    jobs, refused = _admit(run, candidates, owned=True, sleep=sleep, wait=wait)
    report.outcomes.extend(refused)
    _process(run, jobs, report, quiet=quiet, progress=progress)
    return report


def ingest_files(
    store: Store,
    settings: Settings,
    paths: Iterable[Path],
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    wait: bool = True,
    quiet: bool = False,
    progress: bool | None = None,
    parse: ParseFn | None = None,
    hook: StageHook | None = None,
) -> IngestReport:
    """Ingest the named dumps. Files in the inbox move like inbox files; files elsewhere are
    stored but never moved or changed (a bad one is only reported)."""
    run = _Run(store, settings, clock=clock, parse=parse, hook=hook)
    report = IngestReport()
    inbox = _real(settings.inbox.dir)
    owned: list[Path] = []
    foreign: list[Path] = []
    for path in paths:
        if _real(path.parent) == inbox:
            owned.append(path)
        else:
            foreign.append(path)
    for group, is_owned in ((owned, True), (foreign, False)):
        jobs, refused = _admit(run, group, owned=is_owned, sleep=sleep, wait=wait)
        report.outcomes.extend(refused)
        _process(run, jobs, report, quiet=quiet, progress=progress)
        if report.aborted:
            break
    return report


# --- admission: which files are complete dumps we may read -------------------------------------


def _ignored(name: str) -> bool:
    """Dotfiles, files still being written by convention, and our own error notes."""
    return name.startswith(".") or name.endswith(IGNORED_SUFFIXES) or name.endswith(ERROR_SUFFIX)


def _real(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


def _admit(
    run: _Run,
    paths: Sequence[Path],
    *,
    owned: bool,
    sleep: Callable[[float], None],
    wait: bool,
) -> tuple[list[_Job], list[FileOutcome]]:
    """Split paths into settled regular files to ingest and outcomes for the rest."""
    settle = run.inbox.settle_seconds
    ready: list[_Job] = []
    pending: list[_Job] = []
    outcomes: list[FileOutcome] = []
    for path in paths:
        name = _shown(path, owned)
        if not path.name or path.name in (".", "..") or "\0" in str(path):
            outcomes.append(FileOutcome(str(path), "refused", reason="not a file name"))
            continue
        try:
            st = path.lstat()
        except OSError as exc:
            outcomes.append(FileOutcome(name, "failed", reason=f"cannot read: {exc.strerror}"))
            continue
        if stat.S_ISLNK(st.st_mode):
            outcomes.append(_refuse(run, path, owned, "is a symbolic link; copy the dump instead"))
        elif not stat.S_ISREG(st.st_mode):
            outcomes.append(FileOutcome(name, "refused", reason="not a regular file"))
        elif path.name.endswith(IGNORED_SUFFIXES):
            why = "is still being written (.part/.tmp): rename it when complete"
            outcomes.append(FileOutcome(name, "waiting", reason=why))
        elif run.clock() - st.st_mtime >= settle:
            ready.append(_Job(path, owned, st))
        else:
            pending.append(_Job(path, owned, st))
    waited = 0.0
    if pending and wait:
        newest = max(job.stat.st_mtime for job in pending)
        # At most one interval: an mtime in the future (clock skew) must not stall us.
        waited = min(settle, max(0.0, newest + settle - run.clock()))
        sleep(waited)
    for job in pending:
        try:
            again = job.path.lstat()
        except OSError:
            continue  # gone (renamed by its writer?); a later run sees it under its new name
        quiet_for = max(run.clock() - again.st_mtime, waited)
        if wait and _same(again, job.stat) and quiet_for >= settle:
            ready.append(_Job(job.path, job.owned, again))
        else:
            why = f"modified less than {settle:g} s ago; taken once it settles"
            outcomes.append(FileOutcome(job.path.name, "waiting", reason=why))
    order = {path: i for i, path in enumerate(paths)}
    ready.sort(key=lambda job: order[job.path])  # as given: inbox names are sorted already
    return ready, outcomes


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ino) == (b.st_size, b.st_mtime_ns, b.st_ino)


def _shown(path: Path, owned: bool) -> str:
    """How messages name a file: an inbox file by its name, one named on the command line as
    it was given (`error: bad/junk.txt:3: ...`, as `digest parse` says it)."""
    return path.name if owned else str(path)


def _refuse(run: _Run, path: Path, owned: bool, reason: str) -> FileOutcome:
    """Refuse a file without reading it; one in the inbox is set aside in failed/."""
    moved = None
    if owned:
        moved = _set_aside(path, run.inbox.failed_dir, _error_text(path.name, reason, run.now()))
    return FileOutcome(_shown(path, owned), "refused", reason=reason, moved_to=moved)


# --- processing ---------------------------------------------------------------------------------


def _process(
    run: _Run,
    jobs: list[_Job],
    report: IngestReport,
    *,
    quiet: bool,
    progress: bool | None,
) -> None:
    if not jobs:
        return
    # One dump needs no bar; `progress` overrides the terminal check either way.
    show = progress if len(jobs) > 1 else False
    bar = progress_bar(len(jobs), unit="dump", quiet=quiet, show=show)
    try:
        for job in jobs:
            bar.set_postfix_str(job.path.name[:40], refresh=False)
            try:
                outcome = _ingest_one(run, job)
            except StoreError as exc:
                report.aborted = str(exc)
                return
            except SQLAlchemyError as exc:
                # The database, not the dump, is at fault: leave this and the rest in place.
                report.aborted = f"{job.path.name}: database error: {_first_line(exc)}"
                return
            report.outcomes.append(outcome)
            _log(outcome)
            bar.update(1)
    finally:
        bar.close()


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


# Parser warnings shown per file: a messy dump can hold a thousand, all in `digest parse FILE`.
SHOWN_WARNINGS = 5


def _shown_warnings(name: str, result: ParseResult) -> tuple[str, ...]:
    """The parser's first warnings on a file as `NAME:LINE: what`, and how many more."""
    shown = [f"{name}:{w.line}: {w.message}" for w in result.warnings[:SHOWN_WARNINGS]]
    if (more := len(result.warnings) - SHOWN_WARNINGS) > 0:
        shown.append(f"{name}: {more} more warning(s); `digest parse {name}` lists them all")
    return tuple(shown)


def _log(outcome: FileOutcome) -> None:
    # Failures and doubts are the caller's to report (the CLI prints them, the daemon logs
    # them as warnings): at a higher level here they were said twice.
    if outcome.status == "failed":
        log.debug("dump %s failed: %s", outcome.name, outcome.reason)
    else:
        log.info(
            "dump %s %s: %d papers, %d new",
            outcome.name,
            outcome.status,
            outcome.papers,
            outcome.new_papers,
        )


def _ingest_one(run: _Run, job: _Job) -> FileOutcome:
    """Read, hash, parse and store one dump, then move it; StoreError stops the whole run."""
    stored_as = job.path.name  # the store and failed/ know a dump by its file name
    name = _shown(job.path, job.owned)
    max_bytes = run.inbox.max_bytes
    try:
        data, st = _read(job.path, max_bytes)
    except _Oversized as big:
        reason = f"file is {big.size} bytes, over the limit of {max_bytes} (inbox.max_bytes)"
        return _fail(run, job, big.sha256, big.size, ParseError(reason, file=name))
    except OSError as exc:
        return FileOutcome(name, "failed", reason=f"cannot read: {exc.strerror or exc}")
    if not _same(st, job.stat):
        why = "changed while being read; taken once it settles"
        return FileOutcome(name, "waiting", reason=why)
    sha256 = hashlib.sha256(data).hexdigest()
    size = len(data)

    earlier = run.store.dump_by_sha256(sha256)
    if earlier is not None and earlier.status == "stored":
        if earlier.name == stored_as:
            # Stored before a crash kept it from moving: finish that job, record nothing new.
            reason = f"already stored as dump {earlier.id}"
        else:
            run.store.record_duplicate_dump(stored_as, sha256, size, run.now())
            reason = f"same content as {earlier.name} (dump {earlier.id})"
        return FileOutcome(name, "duplicate", reason=reason, moved_to=_done(run, job, sha256))

    try:
        result = run.parse(data, name=name, mtime=st.st_mtime, max_bytes=max_bytes)
    except ParseError as exc:
        return _fail(run, job, sha256, size, exc)
    except Exception as exc:  # a parser bug must not block the rest of the inbox
        log.exception("parser crashed on %s", name)
        failure = ParseError(f"internal parser error: {type(exc).__name__}: {exc}", file=name)
        return _fail(run, job, sha256, size, failure)
    run.hook("parsed", job.path)
    warnings = _shown_warnings(name, result)

    outcome = run.store.ingest_dump(
        stored_as,
        sha256,
        size,
        result,
        received_at=run.now(),
        rising=run.rising,
    )
    run.hook("stored", job.path)
    moved = _done(run, job, sha256)
    run.hook("moved", job.path)
    if outcome.status == "duplicate":
        return FileOutcome(
            name, "duplicate", reason="same content as an earlier dump", moved_to=moved,
            warnings=warnings,
        )  # fmt: skip
    return FileOutcome(
        name, "stored", outcome.papers, outcome.new_papers, moved_to=moved, warnings=warnings
    )


class _Oversized(Exception):
    def __init__(self, size: int, sha256: str) -> None:
        self.size = size
        self.sha256 = sha256


def _read(path: Path, max_bytes: int) -> tuple[bytes, os.stat_result]:
    """Read a regular file without following a symlink swapped in since it was checked."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise OSError(0, "not a regular file")
        if st.st_size > max_bytes:
            digest = hashlib.sha256()
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
            raise _Oversized(st.st_size, digest.hexdigest())
        data = fh.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise _Oversized(len(data), hashlib.sha256(data).hexdigest())
        return data, os.fstat(fh.fileno())


def _fail(run: _Run, job: _Job, sha256: str, size: int, error: ParseError) -> FileOutcome:
    """Record a bad dump, then set it aside in failed/ with NAME.error.txt saying why."""
    name = job.path.name
    run.store.record_failed_dump(name, sha256, size, str(error), run.now())
    moved = None
    if job.owned:
        note = _error_text(name, error.reason, run.now(), line=error.line, sha256=sha256, size=size)
        moved = _set_aside(job.path, run.inbox.failed_dir, note)
    return FileOutcome(_shown(job.path, job.owned), "failed", reason=str(error), moved_to=moved)


def _error_text(
    name: str,
    reason: str,
    when: datetime,
    *,
    line: int | None = None,
    sha256: str | None = None,
    size: int | None = None,
) -> str:
    rows = [("file", name)]
    if line is not None:
        rows.append(("line", str(line)))
    rows.append(("reason", reason))
    if size is not None:
        rows.append(("size", str(size)))
    if sha256:
        rows.append(("sha256", sha256))
    rows.append(("failed_at", when.isoformat(timespec="seconds")))
    rows.append(("next", "fix or replace the dump, then drop it into the inbox again"))
    return "".join(f"{k}: {v}\n" for k, v in rows)


# --- moving files -------------------------------------------------------------------------------


def _done(run: _Run, job: _Job, sha256: str) -> Path | None:
    """Move a stored dump to processed/ (dumps outside the inbox stay where they are)."""
    if not job.owned:
        return None
    folder = run.inbox.processed_dir
    twin = folder / job.path.name
    if _same_content(twin, sha256):
        # A crash between linking it into processed/ and unlinking it here: finish that move.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(job.path)
        return twin
    return _move(job.path, folder)


def _same_content(path: Path, sha256: str) -> bool:
    try:
        if not path.is_file() or path.is_symlink():
            return False
        return hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    except OSError:
        return False


def _set_aside(path: Path, folder: Path, note: str) -> Path | None:
    """Move a bad dump to folder with NAME.error.txt beside it (written first, atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = _free_name(folder, path.name, also=ERROR_SUFFIX)
    note_path = target.with_name(target.name + ERROR_SUFFIX)
    atomic_write(note_path, note.encode("utf-8"))
    return _move(path, folder, target=target)


def _move(path: Path, folder: Path, *, target: Path | None = None) -> Path | None:
    """Move without ever overwriting: on a name clash the new file gets a -N suffix.

    Returns None when the file is already gone (another run moved it first).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for _attempt in range(100):
        dest = target or _free_name(folder, path.name)
        target = None
        try:
            os.link(path, dest, follow_symlinks=False)  # fails if dest exists: no clobbering
        except FileExistsError:
            continue
        except FileNotFoundError:
            return None
        except OSError:
            # No hard links here (another file system, FAT...): check-then-rename instead.
            if dest.exists():
                continue
            try:
                os.rename(path, dest)
            except FileNotFoundError:
                return None
            except OSError:
                import shutil

                shutil.move(path, dest)
            return dest
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return dest
    raise StoreError(f"{path}: cannot find a free name in {folder}")


def _free_name(folder: Path, name: str, *, also: str = "") -> Path:
    """folder/name, or folder/stem-N.suffix for the first N that is free (with name+also)."""
    stem, dot, suffix = name.rpartition(".")
    if not stem:
        stem, dot, suffix = name, "", ""
    n = 0
    while True:
        candidate = folder / (name if n == 0 else f"{stem}-{n}{dot}{suffix}")
        taken = candidate.exists() or candidate.is_symlink()
        if also and not taken:
            extra = candidate.with_name(candidate.name + also)
            taken = extra.exists()
        if not taken:
            return candidate
        n += 1

"""Static lists from a file: an operator uploads a CSV or Excel list of phones, emails, external
ids or unionids; a background job matches every row, adds the contacts found and writes the rows
that matched nobody to a downloadable CSV.

The upload is checked where that is cheap (extension, size, encoding, the first row, the row
count); the job then reads the file in batches, reporting its progress, and adds every contact
it found in one transaction at the end: a job that fails adds nobody, and running the same file
again adds nobody twice.

Every row of the file but its title row is counted once: as the first to find a contact, as a
repeat of a contact an earlier row found, or as matching nobody (rows = found + repeated +
unmatched).
"""

import csv
import logging
import re
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import translation
from django.utils.translation import gettext as _

from contacts.exporters import FORMULA_START, SAFE_PHONE
from contacts.importers import HEADER_ALIASES, IMPORT_DIR, MAX_UPLOAD_BYTES, detect_encoding
from contacts.models import Contact, Identity, IdentityKind
from contacts.services import IdentityInput, normalize_identity
from core import jobs
from core.errors import DomainError, ValidationFailed
from core.models import Job, JobStatus
from core.uploads import media_path, upload_store
from segments.models import Segment, SegmentKind
from segments.services import _require_static, segment_static_add

logger = logging.getLogger(__name__)

STATIC_IMPORT_JOB_KIND = "segments.static_import"
STATIC_MATCH_KINDS = {
    "phone": IdentityKind.PHONE,
    "email": IdentityKind.EMAIL,
    "external_id": IdentityKind.EXTERNAL_ID,
    "unionid": IdentityKind.WECHAT_UNIONID,
}
# Rows of a file, its title row included: what one import may hold.
STATIC_IMPORT_MAX_ROWS = 200_000
# Values per lookup query: bounded so that SQLite's parameter limit is never reached.
LOOKUP_BATCH = 1000
# Rows read, matched and reported per progress update: normalising 5,000 phone numbers took
# about 0.6 s (most of a batch's time), so the bar moves every second or so and a file of the
# largest size costs 40 small UPDATEs of the job.
READ_BATCH = 5000
# Unmatched rows kept on the job for the page; the downloadable file holds every one.
UNMATCHED_SHOWN = 500
CSV_SUFFIXES = ("", ".csv", ".txt")
EXCEL_SUFFIXES = (".xlsx", ".xlsm")
# How every OLE2 compound file begins: an old .xls workbook, or an .xlsx saved with a password
# (Excel encrypts it into one). Neither can be read.
OLE2_SIGNATURE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# A title cell is compared without case, spaces, punctuation and what brackets hold
# ("手机号（必填）", "Phone (required)"): see _header_word.
HEADER_BRACKETS_RE = re.compile(r"[(（\[【《<][^)）\]】》>]*[)）\]】》>]")
HEADER_NOISE_RE = re.compile(r"[\s\ufeff_\-*＊:：.。#＃/\\'\"“”‘’]")


def _header_word(text: str) -> str:
    """A title cell as HEADER_WORDS spells it: "手机号码（必填）" → "手机号码", "Phone Number" →
    "phonenumber", "E-mail" → "email"; a cell that is all in brackets ("【手机号】") by what
    they hold."""
    word = HEADER_NOISE_RE.sub("", HEADER_BRACKETS_RE.sub("", text))
    if not word:
        word = HEADER_NOISE_RE.sub("", re.sub(r"[(（\[【《<)）\]】》>]", "", text))
    return word.lower()


# Title-row spellings of the columns a list holds, as _header_word gives them: the usual
# Chinese and English ones, and the contact importer's (its HEADER_ALIASES for these columns).
HEADER_SPELLINGS = (
    # phone
    "手机", "手机号", "手机号码", "手机电话", "移动电话", "电话", "电话号码", "联系电话",
    "联系方式", "联系人电话", "客户手机", "客户手机号", "会员手机", "会员手机号", "mobile",
    "mobileno", "mobilenumber", "mobilephone", "phone", "phoneno", "phonenumber", "tel",
    "telephone", "cellphone",
    # email
    "邮箱", "邮箱地址", "电子邮箱", "电子邮件", "邮件", "邮件地址", "email", "mail",
    "emailaddress",
    # external id
    "id", "外部id", "外部编号", "会员号", "会员编号", "会员id", "会员卡号", "客户号", "客户编号",
    "客户id", "客户代码", "用户id", "用户编号", "externalid", "memberid", "memberno",
    "membernumber", "customerid", "customerno", "customernumber", "userid",
    # unionid
    "unionid", "微信unionid", "wechatunionid", "wxunionid",
)  # fmt: skip
HEADER_WORDS = frozenset(HEADER_SPELLINGS) | {
    _header_word(alias)
    for alias, target in HEADER_ALIASES.items()
    if target in ("phone", "email", "external_id", "unionid")
}

# A value Excel turns into a number and shows or keeps otherwise when it opens a CSV: the "+" of
# an international number goes, a leading zero goes, more than 11 digits show as 8.6138E+12 and
# more than 15 are rounded.
EXCEL_ALTERS_RE = re.compile(r"\+[0-9]+|0[0-9]+|[0-9]{12,}")

# (row number as the operator sees it in the file, the value as written there, why it matched
# nobody)
Unmatched = tuple[int, str, str]


@dataclass
class StaticImportReport:
    """Counts of one import. Rows leave out the title row; `matched` counts contacts, so a row
    whose contact an earlier row already found counts as `duplicates` instead."""

    rows: int = 0
    matched: int = 0
    duplicates: int = 0
    added: int = 0
    unmatched: int = 0
    unmatched_first: list[Unmatched] = field(default_factory=list)


# --- Reading ----------------------------------------------------------------------------------


def _invalid_file(message: str) -> ValidationFailed:
    return ValidationFailed(message, code="invalid_file")


def _too_many_rows() -> ValidationFailed:
    return ValidationFailed(
        _("A static list file may hold at most %(max)s rows.")
        % {"max": f"{STATIC_IMPORT_MAX_ROWS:,}"},
        code="file_too_large",
    )


def _unreadable(exc: Exception) -> ValidationFailed:
    # Whatever a reader raises on an uploaded file is the file's fault, not ours: a broken
    # archive (BadZipFile), a missing part (KeyError), bad XML, a reader it would need …
    return _invalid_file(
        _("The file could not be read as CSV or Excel: %(error)s")
        % {"error": str(exc) or exc.__class__.__name__}
    )


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


@dataclass
class ListFile:
    """An uploaded list and how to read its first column."""

    path: Path
    fmt: str  # csv | xlsx
    encoding: str = ""

    @classmethod
    def open(cls, path: Path) -> "ListFile":
        """Check that the file is a CSV or workbook this can read; raise ValidationFailed."""
        suffix = path.suffix.lower()
        with path.open("rb") as handle:
            head = handle.read(len(OLE2_SIGNATURE))
        if head == OLE2_SIGNATURE:
            raise _invalid_file(
                _(
                    "The file is a password-protected or old-format (.xls) Excel "
                    "workbook. Save it as .xlsx without a password, or as CSV."
                )
            )
        if suffix in EXCEL_SUFFIXES:
            if not zipfile.is_zipfile(path):
                raise _invalid_file(_("The file is not a valid .xlsx workbook."))
            return cls(path=path, fmt="xlsx")
        return cls(path=path, fmt="csv", encoding=detect_encoding(path))

    def chunks(self, size: int = READ_BATCH) -> Iterator[list[str]]:
        """The first column, `size` rows at a time, blank rows included (they are reported)."""
        try:
            if self.fmt == "xlsx":
                yield from self._xlsx_chunks(size)
                return
            reader = pd.read_csv(
                self.path,
                header=None,
                dtype=str,
                usecols=[0],
                encoding=self.encoding,
                skip_blank_lines=False,
                keep_default_na=False,
                chunksize=size,
            )
            with reader:
                for frame in reader:
                    yield [str(v).strip() for v in frame.iloc[:, 0].tolist()]
        except ValidationFailed:
            raise
        except Exception as exc:
            raise _unreadable(exc) from exc

    def _xlsx_chunks(self, size: int) -> Iterator[list[str]]:
        from openpyxl import load_workbook

        workbook = load_workbook(self.path, read_only=True, data_only=True)
        try:
            batch: list[str] = []
            for row in workbook.worksheets[0].iter_rows(max_col=1, values_only=True):
                batch.append(_cell_text(row[0] if row else None))
                if len(batch) >= size:
                    yield batch
                    batch = []
            if batch:
                yield batch
        finally:
            workbook.close()

    def estimate_rows(self) -> int:
        """Rows in the file, its title included (exact unless cells hold line breaks; 0 when a
        workbook does not say)."""
        if self.fmt == "xlsx":
            from openpyxl import load_workbook

            workbook = load_workbook(self.path, read_only=True)
            try:
                return workbook.worksheets[0].max_row or 0
            finally:
                workbook.close()
        lines, last = 0, b"\n"
        with self.path.open("rb") as handle:
            while block := handle.read(1 << 20):
                lines += block.count(b"\n")
                last = block[-1:]
        return lines + (last != b"\n")


def _match_kind(match_by: str) -> str:
    kind = STATIC_MATCH_KINDS.get(match_by)
    if kind is None:
        raise ValidationFailed(
            _("Match by one of %(choices)s.") % {"choices": ", ".join(STATIC_MATCH_KINDS)},
            code="invalid_match_by",
        )
    return kind


def _is_header(values: list[str]) -> bool:
    """Whether the first row is a title ("手机号", "Mobile", "邮箱地址" …) rather than a value."""
    return bool(values) and _header_word(values[0]) in HEADER_WORDS


def _match(
    values: list[str], *, first_row: int, kind: str
) -> tuple[list[Unmatched], list[tuple[int, int]]]:
    """The rows of one batch that match nobody, and (row, contact) for the others, by row."""
    unmatched: list[Unmatched] = []
    wanted: dict[str, list[tuple[int, str]]] = {}
    for offset, raw in enumerate(values):
        row = first_row + offset
        if not raw:
            unmatched.append((row, raw, str(_("empty"))))
            continue
        try:
            key = normalize_identity(IdentityInput(kind=kind, value=raw)).value
        except ValidationFailed as exc:
            unmatched.append((row, raw, exc.message))
            continue
        wanted.setdefault(key, []).append((row, raw))
    owners: dict[str, int] = {}
    keys = list(wanted)
    for start in range(0, len(keys), LOOKUP_BATCH):
        owners.update(
            # The whole key of identity_unique (these kinds carry no app id): a probe per
            # value. No join to contacts: a merge moves identities to the survivor, and the
            # contacts found are checked for merges again when they are added (_live).
            Identity.objects.filter(
                kind=kind, app_id="", value__in=keys[start : start + LOOKUP_BATCH]
            ).values_list("value", "contact_id")
        )
    nobody = str(_("no contact has this value"))
    found: list[tuple[int, int]] = []
    for key, rows in wanted.items():
        owner = owners.get(key)
        if owner is None:
            # As written in the file: the operator finds and fixes the row by it.
            unmatched.extend((row, raw, nobody) for row, raw in rows)
        else:
            found.extend((row, owner) for row, _raw in rows)
    unmatched.sort()
    found.sort()
    return unmatched, found


def _live(contact_ids: set[int]) -> list[int]:
    ids = sorted(contact_ids)
    live: list[int] = []
    for start in range(0, len(ids), LOOKUP_BATCH):
        live.extend(
            Contact.objects.filter(
                pk__in=ids[start : start + LOOKUP_BATCH], merged_into__isnull=True
            ).values_list("pk", flat=True)
        )
    return live


def segment_static_import(
    *,
    segment: Segment,
    file: str | Path,
    match_by: str,
    on_unmatched: Callable[[list[Unmatched]], None] | None = None,
    on_progress: Callable[[StaticImportReport, int], None] | None = None,
) -> StaticImportReport:
    """Add the contacts listed in a file (one value per row, first column) to a static list.

    Every row that matches nobody goes to `on_unmatched` with the reason, batch by batch;
    `on_progress` hears the counts so far and the rows read (the title row left out). The
    contacts found are added in one transaction at the end (re-importing the same file adds
    nothing twice).
    """
    _require_static(segment)
    kind = _match_kind(match_by)
    source = ListFile.open(Path(file))
    report = StaticImportReport()
    found: set[int] = set()
    read = 0
    for values in source.chunks():
        first_row = read + 1
        read += len(values)
        if read > STATIC_IMPORT_MAX_ROWS:
            raise _too_many_rows()
        if first_row == 1 and _is_header(values):
            values, first_row = values[1:], 2
        unmatched, matches = _match(values, first_row=first_row, kind=kind)
        for _row, contact_id in matches:
            if contact_id in found:
                report.duplicates += 1
            else:
                found.add(contact_id)
        report.rows += len(values)
        report.matched = len(found)
        report.unmatched += len(unmatched)
        room = UNMATCHED_SHOWN - len(report.unmatched_first)
        if room > 0:
            report.unmatched_first.extend(unmatched[:room])
        if on_unmatched is not None and unmatched:
            on_unmatched(unmatched)
        if on_progress is not None:
            on_progress(report, report.rows)
    if found:
        with transaction.atomic():
            # Read again next to the write: a contact merged away while the file was read is
            # no longer one to add.
            live = _live(found)
            report.added = segment_static_add(segment=segment, contact_ids=live) if live else 0
    return report


# --- The background job -----------------------------------------------------------------------


def segment_static_import_start(
    *, segment: Segment, file: UploadedFile, match_by: str, actor: AbstractBaseUser
) -> Job:
    """Store an uploaded list, check it can be read, and queue the job that imports it."""
    _require_static(segment)
    _match_kind(match_by)
    name = file.name or "list.csv"
    suffix = Path(name).suffix.lower()
    if suffix == ".xls":
        raise _invalid_file(_("Old .xls workbooks are not supported; save as .xlsx or CSV."))
    if suffix not in CSV_SUFFIXES + EXCEL_SUFFIXES:
        raise _invalid_file(_("Upload a .csv or .xlsx file (old .xls files are not supported)."))
    if file.size and file.size > MAX_UPLOAD_BYTES:
        raise ValidationFailed(
            _("The file is larger than %(size)s MB; split it into several files.")
            % {"size": MAX_UPLOAD_BYTES // (1024 * 1024)},
            code="file_too_large",
        )
    # Beside the contact imports' uploads, so that the same retention clears them.
    relative = f"{IMPORT_DIR}/static-{uuid.uuid4().hex}{suffix or '.csv'}"
    path = upload_store(file=file, relative=relative)
    try:
        source = ListFile.open(path)
        # The first rows only: a file that cannot even begin to be read fails now, not later.
        with closing(source.chunks(size=1)) as first_rows:
            first = next(first_rows, None) or []
        total = source.estimate_rows()
        if total > STATIC_IMPORT_MAX_ROWS:
            raise _too_many_rows()
        # The progress counts the rows the result counts: the title row is not one.
        total = max(0, total - _is_header(first))
    except ValidationFailed:
        path.unlink(missing_ok=True)
        raise
    except Exception as exc:
        path.unlink(missing_ok=True)
        raise _unreadable(exc) from exc
    job = jobs.job_create(
        kind=STATIC_IMPORT_JOB_KIND,
        created_by=actor,
        input_file=relative,
        total=total,
        params={
            "segment_id": segment.pk,
            "segment": segment.name,
            "match_by": match_by,
            "filename": name[:200],
            "language": translation.get_language(),
        },
    )
    transaction.on_commit(lambda: _enqueue(job.pk))
    return job


def _enqueue(job_id: int) -> None:
    from segments import tasks  # tasks imports this module

    tasks.static_import_file.delay(job_id)


def _unmatched_relative(job: Job) -> str:
    return f"{IMPORT_DIR}/static-job-{job.pk}-unmatched.csv"


def _plain_text(value: str) -> str:
    """A value from the upload as a CSV cell that a spreadsheet shows as it was written."""
    # The file is opened in a spreadsheet: a value from the upload must not run as a formula.
    if value.startswith(FORMULA_START) and not SAFE_PHONE.fullmatch(value):
        return "'" + value
    if EXCEL_ALTERS_RE.fullmatch(value):
        # A CSV cell carries no type and quoting does not stop Excel from reading digits as a
        # number; a leading tab does, stays invisible in the cell, and is stripped when the file
        # is uploaded again (="…" would be a formula, and ' would show).
        return "\t" + value
    return value


def segment_static_import_job_run(*, job_id: int) -> None:
    """Run a queued static-list import to the end: progress, counts, the unmatched rows' file.
    Safe to run again: a finished job is left alone, and a rerun adds nobody twice."""
    job = Job.objects.filter(pk=job_id, kind=STATIC_IMPORT_JOB_KIND).first()
    if job is None or jobs.job_is_finished(job):
        return
    with translation.override(job.params.get("language") or settings.LANGUAGE_CODE):
        _job_run(job)


def _job_run(job: Job) -> None:
    segment = Segment.objects.filter(
        pk=job.params.get("segment_id"), kind=SegmentKind.STATIC, is_archived=False
    ).first()
    if segment is None:
        jobs.job_fail(
            job_id=job.pk, error=_("The static list was archived or deleted before the import.")
        )
        return
    jobs.job_start(job_id=job.pk)
    relative = _unmatched_relative(job)
    path = media_path(relative)
    path.parent.mkdir(parents=True, exist_ok=True)

    read = 0

    def progress(report: StaticImportReport, rows_read: int) -> None:
        nonlocal read
        read = rows_read
        counts = {
            "rows": report.rows,
            "matched": report.matched,
            "duplicates": report.duplicates,
            "unmatched": report.unmatched,
        }
        Job.objects.filter(pk=job.pk).update(done=read, result=counts)

    try:
        with path.open("w", encoding="utf-8-sig", newline="") as out:
            # Every cell quoted: a tab-led cell (_plain_text) then reads as the text it holds.
            writer = csv.writer(out, quoting=csv.QUOTE_ALL)
            writer.writerow([_("Row"), _("Value"), _("Reason")])
            report = segment_static_import(
                segment=segment,
                file=media_path(job.input_file),
                match_by=job.params.get("match_by", ""),
                on_unmatched=lambda rows: writer.writerows(
                    (row, _plain_text(value), reason) for row, value, reason in rows
                ),
                on_progress=progress,
            )
    except Exception as exc:
        path.unlink(missing_ok=True)
        if isinstance(exc, DomainError):
            detail = exc.message
        else:
            logger.exception("static list import job %s failed", job.pk)
            detail = f"{exc.__class__.__name__}: {exc}"
        jobs.job_fail(job_id=job.pk, error=_("Nothing was added: %(error)s") % {"error": detail})
        return
    if not report.unmatched:
        path.unlink(missing_ok=True)
        relative = ""
    jobs.job_progress(job_id=job.pk, done=read, total=read)
    jobs.job_finish(
        job_id=job.pk,
        result={
            "rows": report.rows,
            "matched": report.matched,
            "duplicates": report.duplicates,
            "added": report.added,
            "unmatched": report.unmatched,
            "unmatched_first": [list(row) for row in report.unmatched_first],
        },
        output_file=relative,
    )


def static_import_unmatched_file(*, job: Job) -> Path | None:
    """The file of a finished import's unmatched rows, if it has one and it is still there."""
    if job.kind != STATIC_IMPORT_JOB_KIND or job.status != JobStatus.SUCCEEDED:
        return None
    if not job.output_file:
        return None
    root = Path(settings.MEDIA_ROOT).resolve()
    path = (root / job.output_file).resolve()
    if root not in path.parents or not path.is_file():
        return None
    return path

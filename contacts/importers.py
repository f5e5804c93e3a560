"""Contact import from CSV and Excel files: detect, map, preview, then upsert in chunks.

Rows are read with pandas in chunks and validated column-wise (vectorised) so that a
1,000,000-row file never lives in memory as Python objects. Good rows of a chunk are written in
one transaction: on PostgreSQL through COPY into a temporary staging table and a few set-based
statements, elsewhere (SQLite) with batched inserts and executemany updates. Bad rows go to a
rejected-rows CSV with their reason and never block the good ones.
"""

import codecs
import contextlib
import csv
import datetime as dt
import fcntl
import functools
import io
import json
import logging
import queue
import re
import threading
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from xml.etree import ElementTree

import numpy as np
import pandas as pd
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.core.validators import validate_email
from django.db import DatabaseError, connection, connections, reset_queries, transaction
from django.utils import timezone, translation
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, pgettext, pgettext_lazy
from phonenumbers import PhoneMetadata

from contacts import services
from contacts.labels import source_from_label
from contacts.models import (
    PROFILE_COLUMNS,
    Contact,
    ContactTag,
    CustomField,
    CustomFieldKind,
    Event,
    Gender,
    Identity,
    IdentityKind,
    Stage,
    Tag,
    TagGroup,
    TagSource,
    new_event_id,
)
from contacts.services.locking import contacts_lock_live
from contacts.signals import contact_changed, contacts_changed_in_bulk
from core import jobs
from core.errors import DomainError, ValidationFailed
from core.models import AuditLog, Job, JobStatus
from core.sql import bigint_array
from core.uploads import media_path, upload_store

logger = logging.getLogger(__name__)
T = TypeVar("T")

JOB_KIND = "contact_import"
# The timeline entry of every existing contact an import changes (docs/events.md); contacts it
# creates get none: the timeline derives "created by import" from the job's CREATED_IDS.
IMPORT_EVENT = "contact_imported"
# The job parameter listing the contact ids the import created, as [first, last] ranges
# (written with each chunk, in its transaction). A range may hold ids that no contact has
# (sequence values of rows refused after they were numbered), never another contact's.
CREATED_IDS = "created_ids"
# Rows per chunk: each chunk is one transaction. 20,000 rows keep a chunk's DataFrames near
# 30 MB and a chunk's commit under a second on PostgreSQL (measured by bench/import_vs_copy.py).
CHUNK_ROWS = 20_000
PREVIEW_ROWS = 20
# Above this many touched contacts no per-contact signal is sent (1,000,000 ids would be
# re-evaluated one by one): one contacts_changed_in_bulk tells receivers to rebuild instead.
SIGNAL_LIMIT = 10_000
SIGNAL_BATCH = 1_000
# Tags named in a file that do not exist yet are created in this group.
IMPORT_TAG_GROUP = "导入"
IMPORT_DIR = "imports"
MAX_UPLOAD_BYTES = 200 * 1024 * 1024
# What an uploaded workbook may unpack to, in all and against its own size.
MAX_UNPACKED_BYTES = 4 * 1024 * 1024 * 1024
MAX_UNPACK_RATIO = 100

# Target fields an input column can map to, with their labels for the mapping form.
TARGETS: dict[str, Any] = {
    "phone": gettext_lazy("Phone"),
    "email": gettext_lazy("Email"),
    "external_id": gettext_lazy("External id"),
    "unionid": gettext_lazy("WeChat unionid"),
    "name": pgettext_lazy("person", "Name"),
    "nickname": gettext_lazy("Nickname"),
    "gender": gettext_lazy("Gender"),
    "birthday": gettext_lazy("Birthday"),
    "province": gettext_lazy("Province"),
    "city": gettext_lazy("City"),
    "source": gettext_lazy("Source"),
    "channel_code": gettext_lazy("Channel code"),
    "lifecycle_stage": gettext_lazy("Lifecycle stage"),
    "tags": gettext_lazy("Tags"),
}
CUSTOM_PREFIX = "cf:"

# The identity each upsert key is matched by.
UPSERT_KEYS: dict[str, str] = {
    "phone": IdentityKind.PHONE,
    "email": IdentityKind.EMAIL,
    "external_id": IdentityKind.EXTERNAL_ID,
    "unionid": IdentityKind.WECHAT_UNIONID,
}

# Header spellings, as _header_key writes them: lower-cased, without a note in brackets
# ("手机号（必填）", "Phone (required)"), spaces, underscores, dashes, asterisks and colons.
# Contact columns ambiguous between two fields (联系方式: a phone or an email?) are left to the
# operator.
HEADER_ALIASES: dict[str, str] = {
    **dict.fromkeys(
        [
            "手机号",
            "手机号码",
            "手机",
            "电话",
            "电话号码",
            "联系电话",
            "移动电话",
            "手机电话",
            "mobile",
            "mobilephone",
            "mobilenumber",
            "cellphone",
            "phone",
            "phonenumber",
            "tel",
            "telephone",
        ],
        "phone",
    ),
    **dict.fromkeys(["姓名", "名字", "客户姓名", "真实姓名", "name", "fullname"], "name"),
    **dict.fromkeys(["昵称", "微信昵称", "nickname", "nick"], "nickname"),
    **dict.fromkeys(["性别", "gender", "sex"], "gender"),
    **dict.fromkeys(
        [
            "生日",
            "出生日期",
            "出生年月",
            "出生年月日",
            "生日日期",
            "birthday",
            "birthdate",
            "dateofbirth",
            "dob",
        ],
        "birthday",
    ),
    **dict.fromkeys(
        [
            "邮箱",
            "邮箱地址",
            "电子邮箱",
            "电子邮件",
            "电子邮件地址",
            "邮件",
            "邮件地址",
            "email",
            "emailaddress",
            "mail",
        ],
        "email",
    ),
    **dict.fromkeys(["省份", "省", "所在省份", "所在省", "省份名称", "province"], "province"),
    **dict.fromkeys(["城市", "市", "所在城市", "所在市", "所属城市", "城市名称", "city"], "city"),
    **dict.fromkeys(["来源", "客户来源", "来源渠道", "source"], "source"),
    **dict.fromkeys(["渠道码", "渠道活码", "channelcode"], "channel_code"),
    **dict.fromkeys(["unionid", "微信unionid"], "unionid"),
    **dict.fromkeys(
        [
            "外部id",
            "externalid",
            "会员号",
            "会员编号",
            "会员id",
            "会员卡号",
            "客户编号",
            "客户id",
            "用户编号",
            "用户id",
        ],
        "external_id",
    ),
    **dict.fromkeys(["标签", "标签名称", "tags", "tag"], "tags"),
    **dict.fromkeys(
        ["生命周期", "生命周期阶段", "阶段", "lifecyclestage", "stage"], "lifecycle_stage"
    ),
}
# Words a header may start with before a known header: 客户手机号, 用户昵称, 会员生日 … (a
# spelling listed above as a whole, such as 会员编号, is matched as listed).
HEADER_PREFIXES = ("客户", "用户", "会员", "顾客", "customer", "user", "member")
TAG_SPLIT_RE = r"[,，、|]"
TAG_NAME_LENGTH: int = Tag._meta.get_field("name").max_length

# Every identity column is also stored as an Identity: its value must fit Identity.value.
IDENTITY_VALUE_LENGTH: int = Identity._meta.get_field("value").max_length
# Longest value per target; phones and emails are checked after normalisation.
MAX_LENGTHS: dict[str, int] = {
    **services.COLUMN_TRAITS,
    "email": min(Contact._meta.get_field("email").max_length, IDENTITY_VALUE_LENGTH),
    "phone": min(Contact._meta.get_field("phone").max_length, IDENTITY_VALUE_LENGTH),
    "unionid": IDENTITY_VALUE_LENGTH,
    "external_id": IDENTITY_VALUE_LENGTH,
}
GENDERS = {
    "男": Gender.MALE,
    "男性": Gender.MALE,
    "先生": Gender.MALE,
    "male": Gender.MALE,
    "m": Gender.MALE,
    "女": Gender.FEMALE,
    "女性": Gender.FEMALE,
    "女士": Gender.FEMALE,
    "female": Gender.FEMALE,
    "f": Gender.FEMALE,
    "未知": Gender.UNKNOWN,
    "unknown": Gender.UNKNOWN,
}
# The columns of a prepared chunk, in staging-table order.
STAGE_COLUMNS = [
    "rn",
    "key",
    *PROFILE_COLUMNS,
    "lifecycle_stage",
    "unionid",
    "external_id",
    "attributes",
    "tags",
]


class ImportFileError(ValidationFailed):
    code = "invalid_file"


# --- Files ------------------------------------------------------------------------------------

# Title rows above a file's header row that are looked past (see _leading_rows).
MAX_TITLE_ROWS = 5
# Bytes read from the start of an upload to tell text from binary (the same window the NUL test
# of `detect_encoding` looks at).
SNIFF_BYTES = 65536
# The first bytes of files operators upload by mistake (a screenshot, a PDF report, an
# archive), so the error names what the file is instead of failing on it later.
BINARY_SIGNATURES: tuple[tuple[bytes, Any], ...] = (
    (b"\x89PNG\r\n\x1a\n", gettext_lazy("a PNG image")),
    (b"\xff\xd8\xff", gettext_lazy("a JPEG image")),
    (b"GIF87a", gettext_lazy("a GIF image")),
    (b"GIF89a", gettext_lazy("a GIF image")),
    (b"II*\x00", gettext_lazy("a TIFF image")),
    (b"MM\x00*", gettext_lazy("a TIFF image")),
    (b"%PDF-", gettext_lazy("a PDF document")),
    (b"{\\rtf", gettext_lazy("an RTF document")),
    (b"Rar!\x1a\x07", gettext_lazy("a RAR archive")),
    (b"7z\xbc\xaf\x27\x1c", gettext_lazy("a 7-Zip archive")),
    (b"\x1f\x8b", gettext_lazy("a gzip archive")),
    (b"\x7fELF", gettext_lazy("a program")),
)
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
# Compound documents: old .xls/.doc files, and Office files saved with a password (Excel
# wraps an encrypted .xlsx in one).
OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# The part every .xlsx (and .xlsm) workbook has; other Office Open XML files have their own.
XLSX_WORKBOOK_PART = "xl/workbook.xml"
OTHER_ZIP_DOCUMENTS: tuple[tuple[str, Any], ...] = (
    ("word/document.xml", gettext_lazy("a Word document")),
    ("ppt/presentation.xml", gettext_lazy("a PowerPoint presentation")),
)
ODS_MIMETYPE = b"application/vnd.oasis.opendocument.spreadsheet"


def _not_a_table(kind: Any) -> "ImportFileError":
    return ImportFileError(
        _(
            "The file is %(kind)s, not a table of contacts. Upload a CSV file or an Excel "
            ".xlsx workbook."
        )
        % {"kind": kind}
    )


def _damaged_workbook() -> "ImportFileError":
    return ImportFileError(
        _(
            "The Excel workbook is damaged and cannot be read. Open it in Excel, save it again "
            "as .xlsx (or as “CSV UTF-8”) and upload it again."
        )
    )


def sniff_upload(*, file: UploadedFile, suffix: str) -> str:
    """Refuse an upload that cannot be a CSV text or an .xlsx workbook, before it is stored;
    return which of the two it is ("csv" or "xlsx", whatever its name says).

    Reads the first bytes (and, for a ZIP file, its table of contents and checksums): images,
    PDFs, archives, other Office files and damaged workbooks are named in the error here,
    instead of being stored and failing at the mapping step or half-way through the job.
    """
    file.seek(0)
    head = file.read(SNIFF_BYTES)
    file.seek(0)
    if head.startswith(ZIP_MAGIC):
        _sniff_zip(file, suffix)
        return "xlsx"
    if head.startswith(OLE2_MAGIC):
        if suffix == ".xlsx":
            raise ImportFileError(
                _(
                    "The workbook is protected with a password or saved in the old .xls "
                    "format. Remove the password (or save it as .xlsx) in Excel and upload it "
                    "again."
                )
            )
        raise ImportFileError(_("Old .xls workbooks are not supported; save as .xlsx or CSV."))
    for signature, kind in BINARY_SIGNATURES:
        if head.startswith(signature):
            raise _not_a_table(kind)
    if head[8:12] == b"WEBP" and head.startswith(b"RIFF"):
        raise _not_a_table(_("a WebP image"))
    if head[4:8] == b"ftyp":
        raise _not_a_table(_("a video or a phone photo (HEIC)"))
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ImportFileError(
            _(
                "The file is UTF-16 text (Excel’s “Unicode Text”). Save it from Excel as "
                "“CSV UTF-8” and upload it again."
            )
        )
    if suffix == ".xlsx":
        if b"\x00" not in head:
            raise ImportFileError(
                _(
                    "The file is named .xlsx but holds text, not an Excel workbook. If it is a "
                    "CSV file, rename it to .csv and upload it again."
                )
            )
        raise ImportFileError(_("The file is not a valid .xlsx workbook."))
    if b"\x00" in head:
        raise ImportFileError(
            _("The file looks binary, not like a CSV text file. Save it as CSV or .xlsx.")
        )
    return "csv"


def _sniff_zip(file: UploadedFile, suffix: str) -> None:
    """Accept a ZIP file only when it is an intact .xlsx workbook (whatever its name)."""
    try:
        with zipfile.ZipFile(file.file) as archive:
            names = set(archive.namelist())
            if XLSX_WORKBOOK_PART not in names:
                if "mimetype" in names and archive.read("mimetype").strip() == ODS_MIMETYPE:
                    raise ImportFileError(
                        _(
                            "OpenDocument spreadsheets (.ods) are not supported; save the file "
                            "as .xlsx or CSV."
                        )
                    )
                for part, kind in OTHER_ZIP_DOCUMENTS:
                    if part in names:
                        raise _not_a_table(kind)
                raise ImportFileError(
                    _(
                        "The file is a ZIP archive, not an Excel workbook. Unzip it and upload "
                        "the .csv or .xlsx file inside."
                    )
                )
            # The checksum test below inflates every part inside the request: a small file
            # that unpacks to gigabytes (a "zip bomb") would hold a web worker for minutes.
            # Real workbooks unpack to 5–20 times their size.
            unpacked = sum(info.file_size for info in archive.infolist())
            if unpacked > MAX_UNPACKED_BYTES or unpacked > MAX_UNPACK_RATIO * max(file.size, 1):
                raise ImportFileError(
                    _(
                        "The workbook unpacks to far more data than a spreadsheet of its size "
                        "holds: it is damaged or not a real workbook. Open it in Excel, save it "
                        "again as .xlsx (or as “CSV UTF-8”) and upload it again."
                    )
                )
            # A damaged part would otherwise stop the job at the row that reads it. Checking
            # every part's checksum takes about 0.3 s per 10 MB of workbook (300,000 rows).
            if archive.testzip() is not None:
                raise _damaged_workbook()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError) as exc:
        # A truncated download, or a part whose data do not inflate.
        raise _damaged_workbook() from exc
    finally:
        file.seek(0)


def detect_encoding(path: Path) -> str:
    """Return "utf-8-sig" or "gb18030" (a superset of GBK) for a text file, or raise."""
    with path.open("rb") as fh:
        head = fh.read(65536)
    if b"\x00" in head:
        raise ImportFileError(
            _("The file looks binary, not like a CSV text file. Save it as CSV or .xlsx.")
        )
    for encoding in ("utf-8-sig", "gb18030"):
        decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
        try:
            with path.open("rb") as fh:
                while block := fh.read(1 << 20):
                    decoder.decode(block)
                decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            continue
        return encoding
    raise ImportFileError(
        _(
            "The file is neither UTF-8 nor GBK/GB18030 text. Save it from Excel as "
            "“CSV UTF-8” and upload it again."
        )
    )


def _sniff_delimiter(path: Path, encoding: str) -> str:
    with path.open(encoding=encoding, newline="") as fh:
        sample = fh.read(8192)
    # The header's line: blank lines above it (and lines of bare separators) are skipped, and
    # so are title lines without any separator ("客户名单 2026-11" above the header).
    lines = [line for line in sample.splitlines() if line.strip(" \t,;")][: MAX_TITLE_ROWS + 1]
    first_line = next(
        (line for line in lines if any(sep in line for sep in (",", "\t", ";"))),
        lines[0] if lines else "",
    )
    counts = {sep: first_line.count(sep) for sep in (",", "\t", ";")}
    best = max(counts, key=lambda sep: counts[sep])
    return best if counts[best] else ","


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# The cells of a CSV row past the header's columns. In a file that has such rows, the reader
# names the columns past the header EXTRA_CELLS0, EXTRA_CELLS1 …; a chunk in which a row has a
# filled one gets an EXTRA_CELLS column instead, holding for each such row its cells past the
# header as a JSON list ("" for the other rows), which check_chunk refuses with a reason naming
# them. Rows whose cells past the header are all empty (a trailing separator) are read as if
# they had none.
# NUL never occurs in a header (detect_encoding refuses it), so no header can be named so.
EXTRA_CELLS = "\x00extra"
# Columns past the header read at most: a row wider still has its further cells cut (a row of
# thousands of separators would otherwise take each chunk's memory); it is refused all the same
# when one of these cells is filled.
MAX_EXTRA_CELLS = 100


def _fold_extra_cells(frame: pd.DataFrame, width: int) -> pd.DataFrame:
    """`frame` without the columns read past its first `width`, and with EXTRA_CELLS when a
    row has a filled one."""
    past_cells = frame.iloc[:, width:]
    filled = (past_cells != "").to_numpy()
    frame = frame.iloc[:, :width].copy()
    wide = filled.any(axis=1)
    if wide.any():
        texts = []
        for cells, marks in zip(past_cells.to_numpy()[wide], filled[wide], strict=True):
            last = int(np.flatnonzero(marks)[-1])
            texts.append(json.dumps([str(c) for c in cells[: last + 1]], ensure_ascii=False))
        frame[EXTRA_CELLS] = ""
        frame.loc[wide, EXTRA_CELLS] = texts
    return frame


def _csv_error(exc: Exception) -> "ImportFileError":
    """The error for a CSV file the parser cannot read, in the operator's words (the parser's
    own message names its internals)."""
    # "EOF inside string starting at row N": N counts from the file's first row, from 0.
    opened = re.search(r"EOF inside string starting at row (\d+)", str(exc))
    if opened:
        return ImportFileError(
            _(
                'A quotation mark (") opened in row %(row)s of the file is never closed, so '
                "everything after it reads as one cell. Remove the quotation mark or close it, "
                "or save the file again from Excel as “CSV UTF-8”, and upload it again."
            )
            % {"row": int(opened.group(1)) + 1}
        )
    return ImportFileError(
        _(
            "The file cannot be read as CSV. Open it in Excel, save it again as “CSV UTF-8” "
            "and upload it again."
        )
    )


@dataclass
class SourceFile:
    """An uploaded file and how to read it."""

    path: Path
    fmt: str  # csv | xlsx
    encoding: str = ""
    delimiter: str = ","
    _leading: int | None = field(default=None, init=False, repr=False)
    _head: "WorkbookHead | None" = field(default=None, init=False, repr=False)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "SourceFile":
        return cls(
            path=media_path(params["file"]),
            fmt=params["format"],
            encoding=params.get("encoding", ""),
            delimiter=params.get("delimiter", ","),
        )

    def chunks(self, size: int | None = None) -> Iterator[pd.DataFrame]:
        """Yield the data rows as DataFrames of strings, `size` rows at a time.

        A chunk with a CSV row wider than the header has an EXTRA_CELLS column (see there).
        """
        size = size or CHUNK_ROWS
        if self.fmt == "xlsx":
            yield from self._xlsx_chunks(size)
            return
        yield from self._csv_chunks(size)

    def _csv_chunks(self, size: int) -> Iterator[pd.DataFrame]:
        """The data rows of a CSV file, read by pandas' C parser, `size` rows at a time.

        The C parser stops at the first row with more cells than the header has columns, and
        the Python parser, which can step over such rows, is several times slower. So a file is
        read as usual until the parser stops at such a row (a trailing separator, or a value
        with an unquoted separator); it is then read on from the first row not yet yielded,
        with as many columns past the header as its widest row has (counted once with the csv
        module: only such a file pays for it). The cells past the header go to EXTRA_CELLS.
        """
        headers = self.headers()
        extra = 0
        # The parser lets its first row be of any width (and then cuts every row to it): that
        # row is measured here instead.
        if self._first_row_width() > len(headers):
            extra = self._widest_row() - len(headers)
        done = 0
        while True:
            try:
                for frame in self._read_csv(headers, extra=extra, skip=done, size=size):
                    done += len(frame)
                    yield _fold_extra_cells(frame, len(headers)) if extra else frame
                return
            except pd.errors.ParserError as exc:
                widest = extra or self._widest_row() - len(headers)
                if widest <= extra:
                    # Not a row too wide (a quotation mark never closed …): nothing to step over.
                    raise _csv_error(exc) from exc
                logger.info("import file %s has rows wider than its header", self.path.name)
                extra = widest

    def _read_csv(
        self, headers: list[str], *, extra: int, skip: int, size: int
    ) -> Iterator[pd.DataFrame]:
        """The rows after the first `skip` data rows, with `extra` columns past the header."""
        options: dict[str, Any] = {
            "encoding": self.encoding,
            "sep": self.delimiter,
            "dtype": str,
            "keep_default_na": False,
            "chunksize": size,
            # Never the first column as the rows' labels when a row is wider than the header.
            "index_col": False,
            # Blank lines stay rows (skipped by check_chunk), so that the rows after them keep
            # their line's number in the rejected-rows file.
            "skip_blank_lines": False,
        }
        if extra:
            names = [*headers, *(f"{EXTRA_CELLS}{i}" for i in range(min(extra, MAX_EXTRA_CELLS)))]
            reader = pd.read_csv(
                self.path,
                header=None,
                names=names,
                # Beyond MAX_EXTRA_CELLS a row's cells are cut rather than stopping the parser.
                usecols=range(len(names)) if extra > MAX_EXTRA_CELLS else None,
                skiprows=self.leading_rows() + 1 + skip,
                **options,
            )
        else:
            # The header row names the columns, as headers() reads them (and a little faster
            # than skipping it and naming them).
            assert not skip
            reader = pd.read_csv(self.path, skiprows=self.leading_rows(), **options)
        with reader:
            yield from reader

    def _csv_rows(self) -> Iterator[list[str]]:
        """The data rows as the csv module reads them (only to count their cells)."""
        with self.path.open(encoding=self.encoding, newline="") as fh:
            rows = csv.reader(fh, delimiter=self.delimiter)
            for _skipped in range(self.leading_rows() + 1):
                next(rows, None)
            yield from rows

    def _first_row_width(self) -> int:
        try:
            return len(next(self._csv_rows(), []))
        except csv.Error:
            return 0  # a cell over the csv module's size limit: pandas reads it, or says why

    def _widest_row(self) -> int:
        """The most cells a data row of the file has."""
        try:
            return max((len(row) for row in self._csv_rows()), default=0)
        except csv.Error as exc:
            raise _csv_error(exc) from exc

    def workbook_head(self) -> "WorkbookHead":
        """What the upload and the job need to know of a workbook before its rows, read with
        one load_workbook: each load reads every shared string of the workbook (seconds for a
        sheet of 200,000 rows), and the sheet's first rows are cheap to read again after it."""
        if self._head is None:
            from openpyxl import load_workbook

            workbook = load_workbook(self.path, read_only=True, data_only=True)
            try:
                sheet = _data_sheet(workbook)
                leading = _leading_rows(sheet.iter_rows(values_only=True))
                rows = sheet.iter_rows(values_only=True)
                for _blank in range(leading):
                    next(rows, None)
                header = [_cell_text(v) for v in next(rows, ())]
                self._head = WorkbookHead(
                    leading=leading,
                    header=header,
                    # None when the workbook records no dimension (some programs write none).
                    max_row=sheet.max_row,
                    sheet=sheet.title,
                    sheets=len(workbook.worksheets),
                )
            finally:
                workbook.close()
        return self._head

    def leading_rows(self) -> int:
        """The blank and title rows above the header row (see _leading_rows), which headers()
        and chunks() skip alike: the data rows' numbers start after them."""
        if self._leading is None:
            if self.fmt == "xlsx":
                self._leading = self.workbook_head().leading
            else:
                with self.path.open(encoding=self.encoding, newline="") as fh:
                    self._leading = _leading_rows(csv.reader(fh, delimiter=self.delimiter))
        return self._leading

    def _xlsx_chunks(self, size: int) -> Iterator[pd.DataFrame]:
        from openpyxl import load_workbook

        workbook = load_workbook(self.path, read_only=True, data_only=True)
        try:
            rows = _data_sheet(workbook).iter_rows(values_only=True)
            for _blank in range(self.leading_rows()):
                next(rows, None)
            headers = _unique_headers([_cell_text(v) for v in next(rows, ())])
            batch: list[list[str]] = []
            # Empty rows are held back until a row with data follows: they keep the sheet's row
            # numbers (check_chunk skips them), while the empty rows a sheet reports below its
            # data (formatting reaching down the sheet) are never built at all.
            held = 0
            for row in rows:
                values = [_cell_text(v) for v in row[: len(headers)]]
                if not any(values):
                    held += 1
                    continue
                while held:
                    taken = min(held, size - len(batch))
                    batch += [[""] * len(headers) for _blank in range(taken)]
                    held -= taken
                    if len(batch) >= size:
                        yield pd.DataFrame(batch, columns=headers, dtype=str)
                        batch = []
                batch.append(values + [""] * (len(headers) - len(values)))
                if len(batch) >= size:
                    yield pd.DataFrame(batch, columns=headers, dtype=str)
                    batch = []
            if batch:
                yield pd.DataFrame(batch, columns=headers, dtype=str)
        finally:
            workbook.close()

    def headers(self) -> list[str]:
        if self.fmt == "xlsx":
            return _unique_headers(self.workbook_head().header)
        frame = pd.read_csv(
            self.path,
            encoding=self.encoding,
            sep=self.delimiter,
            dtype=str,
            keep_default_na=False,
            nrows=0,
            skiprows=self.leading_rows(),
            skip_blank_lines=False,
        )
        return [str(c) for c in frame.columns]

    def estimate_rows(self) -> int:
        """Data rows in the file (exact unless cells contain line breaks)."""
        if self.fmt == "xlsx":
            head = self.workbook_head()
            rows = head.max_row if head.max_row is not None else _sheet_rows(self.path)
            return max(0, (rows or 1) - 1 - head.leading)
        lines = 0
        last = b"\n"
        with self.path.open("rb") as fh:
            while block := fh.read(1 << 20):
                lines += block.count(b"\n")
                last = block[-1:]
        if last != b"\n":
            lines += 1
        return max(0, lines - 1 - self.leading_rows())


def _data_sheet(workbook: Any) -> Any:
    """The sheet an import reads: the workbook's first visible one. A hidden first sheet (a
    lookup table, a template's instructions) is skipped; which sheet was read, and how many the
    workbook has, is shown on the mapping page (SourceFile.workbook_head)."""
    for sheet in workbook.worksheets:
        if getattr(sheet, "sheet_state", "visible") == "visible":
            return sheet
    return workbook.worksheets[0]


# Cells named in the error about formulas without results: enough to find them in the sheet.
FORMULA_CELLS_SHOWN = 5
# A formula element, with or without a namespace prefix (<f>, <f t="shared" …/>, <x:f>).
_FORMULA_TAG = re.compile(rb"<(?:\w+:)?f[\s>/]")


def formula_cells_without_results(path: Path) -> list[str]:
    """The first cells (A1 references) of the data sheet that hold a formula without a saved
    result, up to one more than FORMULA_CELLS_SHOWN (so the error can say there are more).

    Excel and WPS save each formula's last result next to it, and an import reads that result.
    A workbook written by a program (a report generator, openpyxl) often holds only the
    formulas: their cells would import as empty, without a word. Most sheets have no formula at
    all, so the sheet's XML is first only searched for one (fast); only a sheet that has some
    is parsed for the cells whose result is missing."""
    with zipfile.ZipFile(path) as archive:
        part = _data_sheet_part(archive)
        if part is None:
            return []
        with archive.open(part) as xml:
            if not any(_FORMULA_TAG.search(window) for _tail, window in _xml_windows(xml)):
                return []
        cells: list[str] = []
        with archive.open(part) as xml:
            rows = None  # <sheetData>: emptied after each row, so memory stays flat
            for event, element in ElementTree.iterparse(xml, events=("start", "end")):
                tag = element.tag.rpartition("}")[2]
                if event == "start":
                    if tag == "sheetData":
                        rows = element
                elif tag == "c":
                    children = {child.tag.rpartition("}")[2]: child for child in element}
                    result = children.get("v")
                    # An empty result of a text formula ("" on purpose) is a saved result.
                    if (
                        "f" in children
                        and (result is None or not result.text)
                        and element.get("t") != "str"
                    ):
                        cells.append(element.get("r", "?"))
                        if len(cells) > FORMULA_CELLS_SHOWN:
                            break
                elif tag == "row" and rows is not None:
                    rows.clear()
    return cells


def _xml_windows(xml: Any) -> Iterator[tuple[bytes, bytes]]:
    """A sheet's XML read a megabyte at a time, each block with the previous block's last
    bytes in front (tail, tail + block), so that a tag cut at a block's edge is still seen
    whole by a byte search: the fast way to look for tags without parsing the sheet."""
    tail = b""
    while block := xml.read(1 << 20):
        yield tail, tail + block
        tail = block[-16:]


def _data_sheet_part(archive: zipfile.ZipFile) -> str | None:
    """The archive member of the sheet _data_sheet picks (the first visible one), read from
    the workbook's own list of sheets: openpyxl's load_workbook would also read every shared
    string, seconds for a large sheet."""
    relationships = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"
    try:
        book = ElementTree.fromstring(archive.read("xl/workbook.xml"))
        rels = ElementTree.fromstring(archive.read("xl/_rels/workbook.xml.rels"))
    except (KeyError, ElementTree.ParseError):
        return None
    targets = {rel.get("Id"): rel.get("Target", "") for rel in rels}
    sheets = [sheet for sheet in book.iter() if sheet.tag.rpartition("}")[2] == "sheet"]
    visible = [sheet for sheet in sheets if sheet.get("state", "visible") == "visible"]
    for sheet in visible[:1] or sheets[:1]:
        target = targets.get(sheet.get(relationships), "")
        # Relative to xl/, or absolute within the package ("/xl/worksheets/sheet1.xml").
        part = target.lstrip("/") if target.startswith("/") else f"xl/{target}"
        return part if part in archive.namelist() else None
    return None


def _formulas_without_results(cells: list[str]) -> "ImportFileError":
    shown = ", ".join(cells[:FORMULA_CELLS_SHOWN]) + (
        " …" if len(cells) > FORMULA_CELLS_SHOWN else ""
    )
    return ImportFileError(
        _(
            "Cells %(cells)s hold formulas without a saved result (the workbook was written by a "
            "program, not saved in Excel or WPS), so their values cannot be read and would "
            "import as empty. Open the file in Excel or WPS, save it and upload it again."
        )
        % {"cells": shown},
        details={"cells": cells[:FORMULA_CELLS_SHOWN]},
    )


@dataclass(frozen=True)
class WorkbookHead:
    leading: int  # blank and title rows above the header row
    header: list[str]  # the header row's cells, as text
    max_row: int | None  # the last row the workbook records, None when it records none
    sheet: str  # the name of the sheet an import reads (_data_sheet)
    sheets: int  # the workbook's sheets, hidden ones too


_ROW_TAG = re.compile(rb"<(?:\w+:)?row[\s>/]")


def _sheet_rows(path: Path) -> int:
    """The rows the data sheet's XML holds, counted without parsing it: for a workbook that
    records no dimension (openpyxl then knows no max_row). Rows a sheet keeps only for their
    formatting count too, so this is an estimate, as for CSV files with line breaks in cells."""
    with zipfile.ZipFile(path) as archive:
        part = _data_sheet_part(archive)
        if part is None:
            return 0
        with archive.open(part) as xml:
            # A tag in a block's tail is counted with that block, not again with the next.
            return sum(
                len(_ROW_TAG.findall(window)) - len(_ROW_TAG.findall(tail))
                for tail, window in _xml_windows(xml)
            )


def _leading_rows(rows: Iterator[Any]) -> int:
    """The rows above the header row: blank rows (every cell empty or spaces), and title rows
    when a header follows them.

    Sheets operators export or keep often start with a title ("客户名单 2026-11", merged across
    the columns) or a note above the header. A title row is a row of one filled cell that is no
    known header; it is skipped only when the row after it reads as a header (two or more
    filled cells, one of them a known header), so that a file whose header is unknown or has one
    column keeps its first row as the header.
    """
    blank = 0  # the blank rows above the first title row
    skipped = 0  # every row seen before the current one
    titles = 0
    try:
        for row in rows:
            filled = [text for v in row if (text := _cell_text(v).strip())]
            if not filled:
                skipped += 1
                blank += not titles
                continue
            if len(filled) == 1 and titles < MAX_TITLE_ROWS and not _known_header(filled[0]):
                titles += 1
                skipped += 1
                continue
            if titles and len(filled) > 1 and any(_known_header(text) for text in filled):
                return skipped
            return blank
    except csv.Error:
        # A row the csv module cannot read (a cell over its size limit) is no blank row;
        # pandas reads it, or says why it cannot.
        pass
    return blank


def _known_header(text: str) -> bool:
    return bool(_header_target(_header_key(text), {}))


def _unique_headers(headers: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for index, header in enumerate(headers):
        header = header.strip() or f"column_{index + 1}"
        if header in seen:
            seen[header] += 1
            header = f"{header}.{seen[header]}"
        else:
            seen[header] = 0
        out.append(header)
    return out


def import_upload(*, file: UploadedFile, user: AbstractBaseUser | None) -> Job:
    """Store an uploaded CSV or .xlsx file, check it can be read, and create a queued job."""
    name = file.name or "upload"
    suffix = Path(name).suffix.lower()
    if suffix not in (".csv", ".txt", ".xlsx"):
        raise ImportFileError(_("Upload a .csv or .xlsx file (old .xls files are not supported)."))
    if file.size and file.size > MAX_UPLOAD_BYTES:
        raise ImportFileError(_("The file is larger than 200 MB; split it into several files."))
    if sniff_upload(file=file, suffix=suffix) == "xlsx":
        # A workbook saved under a .csv name: openpyxl opens files by their suffix.
        suffix = ".xlsx"
    relative = f"{IMPORT_DIR}/{uuid.uuid4().hex}{suffix}"
    path = upload_store(file=file, relative=relative)
    source = None
    try:
        source = _inspect(path, suffix)
        headers = source.headers()
        if not any(headers):
            raise ImportFileError(_("The file has no header row."))
        total = source.estimate_rows()
        if source.fmt == "xlsx" and (cells := formula_cells_without_results(path)):
            raise _formulas_without_results(cells)
    except ImportFileError:
        path.unlink(missing_ok=True)
        raise
    except Exception as exc:  # pandas/openpyxl raise many kinds on garbage input
        path.unlink(missing_ok=True)
        logger.info("unreadable import file %s: %s", name, exc)
        raise unreadable_file(source, exc) from exc
    return jobs.job_create(
        kind=JOB_KIND,
        created_by=user,
        input_file=relative,
        total=total,
        params={
            "file": relative,
            "filename": name[:200],
            "format": source.fmt,
            "encoding": source.encoding,
            "delimiter": source.delimiter,
            "headers": headers,
            "sheet": (
                {"name": source.workbook_head().sheet, "count": source.workbook_head().sheets}
                if source.fmt == "xlsx"
                else None
            ),
            "mapping": guess_mapping(headers=headers),
            # Of the uploader: what is said about the job later (an expired upload) is too.
            "language": translation.get_language(),
        },
    )


def unreadable_file(source: "SourceFile | None", exc: Exception) -> ImportFileError:
    """The error for a file its reader failed on, in the operator's words: pandas' and
    openpyxl's own messages name parser internals and XML parts."""
    if isinstance(exc, ImportFileError):
        return exc
    if source is not None and source.fmt == "xlsx":
        return _damaged_workbook()
    return _csv_error(exc)


def _inspect(path: Path, suffix: str) -> SourceFile:
    with path.open("rb") as fh:
        magic = fh.read(4)
    if suffix == ".xlsx" or magic == b"PK\x03\x04":
        if not zipfile.is_zipfile(path):
            raise ImportFileError(_("The file is not a valid .xlsx workbook."))
        return SourceFile(path=path, fmt="xlsx")
    if magic.startswith(b"\xd0\xcf\x11\xe0"):
        raise ImportFileError(_("Old .xls workbooks are not supported; save as .xlsx or CSV."))
    encoding = detect_encoding(path)
    return SourceFile(
        path=path, fmt="csv", encoding=encoding, delimiter=_sniff_delimiter(path, encoding)
    )


# --- Mapping ----------------------------------------------------------------------------------


# A note in brackets after (or before) a header's name: （必填）, (required), 【选填】,
# [yyyy-mm-dd].
_HEADER_NOTE_RE = re.compile(r"[(（【\[［〔][^)）】\]］〕]*[)）】\]］〕]")


def _header_key(header: str) -> str:
    key = _HEADER_NOTE_RE.sub("", header)
    return re.sub(r"[\s_\-*＊:：()（）【】\[\]]", "", key).lower()


def _header_target(key: str, custom: dict[str, str]) -> str:
    """The field a header (as _header_key writes it) names, or "": a built-in spelling, then a
    custom field's label or key, then a built-in spelling after a HEADER_PREFIXES word."""
    target = HEADER_ALIASES.get(key) or custom.get(key)
    if target:
        return target
    for prefix in HEADER_PREFIXES:
        if key.startswith(prefix) and key[len(prefix) :] in HEADER_ALIASES:
            return HEADER_ALIASES[key[len(prefix) :]]
    return ""


def header_label(header: str, index: int) -> str:
    """A column's header as the mapping step shows it: a column without one is named by its
    position, not by the placeholder its reader gave it (pandas' "Unnamed: 2", "column_3")."""
    if not header.strip() or header in (f"Unnamed: {index}", f"column_{index + 1}"):
        return _("(column %(number)s, no header)") % {"number": index + 1}
    return header


def _header_cell(header: str, index: int) -> str:
    """A column's header as the rejected-rows file writes it: empty where the file had none,
    so that the file reads back as the upload did."""
    return "" if header_label(header, index) != header else header


def target_choices() -> list[tuple[str, str]]:
    """Every field a column may map to: the built-in targets, then active custom fields."""
    choices = [(key, str(label)) for key, label in TARGETS.items()]
    for cf in CustomField.objects.filter(is_active=True).order_by("position", "key"):
        choices.append((f"{CUSTOM_PREFIX}{cf.key}", f"{cf.label} ({_('custom field')})"))
    return choices


def guess_mapping(*, headers: list[str]) -> dict[str, str]:
    """Guess each header's target from Chinese and English spellings and custom fields."""
    custom = {}
    for cf in CustomField.objects.filter(is_active=True):
        custom[_header_key(cf.label)] = f"{CUSTOM_PREFIX}{cf.key}"
        custom[_header_key(cf.key)] = f"{CUSTOM_PREFIX}{cf.key}"
    mapping: dict[str, str] = {}
    used: set[str] = set()
    for header in headers:
        key = _header_key(header)
        target = _header_target(key, custom)
        if target and target not in used:
            mapping[header] = target
            used.add(target)
        else:
            mapping[header] = ""
    return mapping


# --- Validation -------------------------------------------------------------------------------


def no_identity_column_message() -> str:
    """Why a mapping without a phone, email, external id or unionid column cannot import."""
    return _(
        "No column is mapped to Phone, Email, External id or WeChat unionid: without one, "
        "no contact can be matched or created. Choose which column of the file holds one."
    )


@dataclass
class ImportSpec:
    """What the operator chose: column mapping, upsert key, tags for every row."""

    mapping: dict[str, str]
    key: str = "phone"
    tag_ids: list[int] = field(default_factory=list)
    default_source: str = "import"
    actor_id: int | None = None
    # The job the rows come from, named by the timeline entries of the contacts it changes.
    job_id: int | None = None
    filename: str = ""

    def __post_init__(self) -> None:
        self.mapping = {h: t for h, t in self.mapping.items() if t}
        targets = list(self.mapping.values())
        if self.key not in UPSERT_KEYS:
            raise ValidationFailed(_("Choose phone, email, external id or unionid as the key."))
        if not set(targets) & set(UPSERT_KEYS):
            raise ValidationFailed(no_identity_column_message())
        if self.key not in targets:
            raise ValidationFailed(
                _("Map a column to “%(key)s”: it is the key that matches existing contacts.")
                % {"key": TARGETS[self.key]}
            )
        doubled = {t for t in targets if targets.count(t) > 1}
        if doubled:
            raise ValidationFailed(
                _("Each field may be mapped from one column only: %(fields)s")
                % {"fields": ", ".join(sorted(doubled))}
            )
        known = set(TARGETS) | {f"{CUSTOM_PREFIX}{k}" for k in _custom_fields()}
        unknown = set(targets) - known
        if unknown:
            raise ValidationFailed(
                _("Unknown fields in the mapping: %(fields)s")
                % {"fields": ", ".join(sorted(unknown))}
            )

    @property
    def custom_keys(self) -> list[str]:
        return [t[len(CUSTOM_PREFIX) :] for t in self.mapping.values() if t.startswith("cf:")]


def _custom_fields() -> dict[str, CustomField]:
    """The active custom fields by key, in the contact form's order."""
    return {
        cf.key: cf for cf in CustomField.objects.filter(is_active=True).order_by("position", "key")
    }


@dataclass
class ChunkState:
    """What validation remembers across chunks: sorted hashes of the keys (and of the other
    identity columns' values) seen so far, and the row offset."""

    seen: dict[str, np.ndarray] = field(default_factory=dict)
    offset: int = 0
    stages: dict[str, str] = field(default_factory=dict)
    # Every tag as (group, name), every tag group and every tag name, when the import
    # started: a "group/name" in a tags cell must name one of these tags, or (its group not
    # being a group) be a tag's whole name.
    tags: frozenset[tuple[str, str]] = frozenset()
    tag_groups: frozenset[str] = frozenset()
    tag_names: frozenset[str] = frozenset()

    def seen_before(self, column: str, hashes: np.ndarray) -> np.ndarray:
        # Each array stays sorted: a binary search per value instead of np.isin, which re-sorts
        # everything seen so far for each chunk (half the Python time of a 1,000,000-row file).
        seen = self.seen.get(column)
        if seen is None or not len(seen):
            return np.zeros(len(hashes), dtype=bool)
        positions = np.minimum(np.searchsorted(seen, hashes), len(seen) - 1)
        return seen[positions] == hashes

    def remember(self, column: str, hashes: np.ndarray) -> None:
        seen = self.seen.get(column, np.empty(0, dtype=np.uint64))
        hashes = np.sort(hashes)
        self.seen[column] = np.insert(seen, np.searchsorted(seen, hashes), hashes)

    @classmethod
    def load(cls, *, offset: int = 0) -> "ChunkState":
        """`offset`: the blank and title rows above the header row (SourceFile.leading_rows)."""
        stages: dict[str, str] = {}
        for stage in Stage.objects.filter(is_active=True):
            stages[stage.key.lower()] = stage.key
            stages[stage.name.strip().lower()] = stage.key
        return cls(
            offset=offset,
            stages=stages,
            tags=frozenset(Tag.objects.values_list("group__name", "name")),
            tag_groups=frozenset(TagGroup.objects.values_list("name", flat=True)),
            tag_names=frozenset(Tag.objects.values_list("name", flat=True)),
        )


# A number as Excel writes one too long for its column: 1.38001E+10, 1,38001E+10.
SCIENTIFIC_NUMBER_RE = r"[0-9]+(?:[.,][0-9]+)?[eE]\+?[0-9]+"


def _safe_phone(raw: str) -> str | None:
    try:
        return services.normalize_phone(raw)
    except DomainError:
        return None


# Bare 11-digit numbers that phonenumbers (region CN) parses without stripping an international
# prefix (00, 1[12]xx00, 179xx00), a carrier code (1[12]xx, 179xx) or a national prefix (0):
# their national number is the text itself. ASCII digits only: phonenumbers also reads
# full-width digits, which the slow path handles.
CN_PLAIN_RE = r"1(?:[3-68][0-9]|7[0-8]|9[0-9])[0-9]{8}"
# The number types phonenumbers' is_valid_number accepts, in the order it checks them.
_NUMBER_TYPES = (
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
    "fixed_line",
    "mobile",
)


@functools.cache
def _cn_plain_patterns() -> tuple[str, str] | None:
    """The patterns is_valid_number applies to a plain 11-digit CN national number.

    Read from phonenumbers' own metadata (general description, then any number type whose
    possible lengths allow 11 digits), so a library upgrade moves both paths together.
    """
    if services.DEFAULT_PHONE_REGION != "CN":
        return None
    metadata = PhoneMetadata.metadata_for_region("CN")

    def applies(desc: Any) -> bool:
        return bool(
            desc is not None
            and desc.national_number_pattern
            and (not desc.possible_length or 11 in desc.possible_length)
        )

    if metadata is None or not applies(metadata.general_desc):
        return None
    types = [getattr(metadata, name, None) for name in _NUMBER_TYPES]
    alternatives = "|".join(f"(?:{d.national_number_pattern})" for d in types if applies(d))
    if not alternatives:
        return None
    return metadata.general_desc.national_number_pattern, alternatives


def _normalise_phones(raw: pd.Series) -> pd.Series:
    """E.164 phones exactly as contacts.services.normalize_phone gives them.

    None where invalid, "" where empty. Plain Chinese mobiles (nearly every row of a real file)
    are checked column-wise against phonenumbers' metadata; every other spelling goes through
    normalize_phone itself, once per distinct value.
    """
    out = pd.Series("", index=raw.index, dtype=object)
    todo = (raw != "").to_numpy()
    patterns = _cn_plain_patterns()
    if patterns is not None and todo.any():
        general, types = patterns
        plain = raw.str.fullmatch(CN_PLAIN_RE).to_numpy(dtype=bool)
        if plain.any():
            candidates = raw[plain]
            valid = (candidates.str.fullmatch(general) & candidates.str.fullmatch(types)).to_numpy(
                dtype=bool
            )
            out[plain] = np.where(valid, "+86" + candidates.to_numpy(dtype=object), None)
            todo = todo & ~plain
    if todo.any():
        values = raw[todo]
        outcomes = {value: _safe_phone(value) for value in values.unique()}
        out[todo] = np.array([outcomes[v] for v in values], dtype=object)
    return out


# Day 0 of Excel's serial dates (from 1900-03-01 on, past its phantom 1900-02-29).
EXCEL_EPOCH = pd.Timestamp("1899-12-30")


def _normalise_birthdays(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Parsed dates (NaT where invalid) and their ISO text."""
    text = raw.str.slice(0, 10)
    dates = pd.to_datetime(text, format="%Y-%m-%d", errors="coerce")
    # ISO dates (and Excel's "1990-05-17 00:00:00") parse at once; other spellings are rewritten.
    other = dates.isna() & (raw != "")
    if other.any():
        alt = raw[other].str.slice(0, 11).str.replace(r"[/.年月]", "-", regex=True).str.rstrip("日")
        alt = alt.str.replace(r"^(\d{4})-(\d)-", r"\1-0\2-", regex=True)
        alt = alt.str.replace(r"^(\d{4}-\d{2})-(\d)$", r"\1-0\2", regex=True)
        alt = alt.str.replace(r"^(\d{4})(\d{2})(\d{2})$", r"\1-\2-\3", regex=True)
        alt = alt.str.slice(0, 10)
        text = text.copy()
        text[other] = alt
        dates[other] = pd.to_datetime(alt, format="%Y-%m-%d", errors="coerce")
        # A date cell whose format was lost (a column set to "General", or pasted as values)
        # holds Excel's serial day number: 33010 is 1990-05-17. Five digits only (1927 to
        # 2173): four would read a bare year such as 1990 as a day in 1905.
        serial = dates.isna() & raw.str.fullmatch(r"[1-9][0-9]{4}").fillna(False).astype(bool)
        if serial.any():
            days = pd.to_datetime(raw[serial].astype("int64"), unit="D", origin=EXCEL_EPOCH)
            dates[serial] = days
            text[serial] = days.dt.strftime("%Y-%m-%d")
    return dates, text


def _custom_validator() -> Callable[..., dict] | None:
    # contacts.services.custom_fields_validate validates custom values on every write path; it
    # may not exist in older trees, in which case values are stored as given. Cells are text,
    # read for what they spell ("42" a number, "是" true, "a,b" two choices): from_text.
    validate = getattr(services, "custom_fields_validate", None)
    return functools.partial(validate, from_text=True) if validate else None


# Whitespace at either end of any cell of a column joined with NULs; `\s` is exactly what
# str.strip() removes (both use str.isspace()).
_EDGE_SPACE_RE = re.compile(r"\A\s|\s\x00|\x00\s|\s\Z")


def _stripped(column: pd.Series) -> pd.Series:
    """The column with its cells stripped; most columns have nothing to strip, and one search
    over the joined text costs a fraction of stripping every cell."""
    if _EDGE_SPACE_RE.search("\x00".join(column.tolist())) is None:
        return column
    return column.str.strip()


@functools.cache
def _email_patterns() -> tuple[re.Pattern, re.Pattern]:
    """Django's validate_email patterns for the part before and after the last "@"."""
    user, domain = validate_email.user_regex, validate_email.domain_regex
    return re.compile(user.pattern, user.flags), re.compile(domain.pattern, domain.flags)


def _valid_emails(emails: pd.Series) -> np.ndarray:
    """Whether each non-empty email passes Django's validate_email, the rule the API applies
    (contacts.services.normalize_identity).

    The validator's own patterns run column-wise; an address they refuse (a `localhost` or IP
    literal domain, or plain garbage) goes through validate_email itself, once per distinct
    value, so the verdict is always the validator's.
    """
    user_re, domain_re = _email_patterns()
    parts = emails.str.rpartition("@")
    fast = (
        (parts[1] == "@")
        # validate_email refuses addresses above its own limit; longer ones take the slow path.
        & (emails.str.len() <= MAX_LENGTHS["email"])
        & parts[0].str.match(user_re)
        & parts[2].str.match(domain_re)
    ).to_numpy(dtype=bool)
    valid = fast | (emails == "").to_numpy(dtype=bool)
    if not valid.all():
        rest = emails[~valid]
        outcomes = {value: _passes(validate_email, value) for value in rest.unique()}
        valid[~valid] = np.array([outcomes[v] for v in rest], dtype=bool)
    return valid


def _passes(validator: Callable[[str], None], value: str) -> bool:
    try:
        validator(value)
    except ValidationError:
        return False
    return True


def _target_label(target: str) -> str:
    """The field's name as operators read it: a custom field by its label, not its key."""
    if target.startswith(CUSTOM_PREFIX):
        key = target[len(CUSTOM_PREFIX) :]
        label = CustomField.objects.filter(key=key).values_list("label", flat=True).first()
        return label or key
    return str(TARGETS[target])


@dataclass
class CheckedChunk:
    """A validated chunk whose duplicates are not decided yet.

    Whether a row is a duplicate depends on the rows before it that are finally kept, and a row
    can still be refused when it is written (a value of another contact): the duplicates are
    decided in the chunk's transaction, after that check (`decide_duplicates`).
    """

    frame: pd.DataFrame  # the rows as read
    first_row: int  # the file row number of the frame's first row
    good: pd.DataFrame  # the valid rows (STAGE_COLUMNS), duplicates included
    bad: pd.DataFrame  # the rows validation rejected, with `_row` and `_reason`
    # Hashes of each duplicate column's values (`duplicate_columns`), aligned with `good`.
    hashes: dict[str, np.ndarray]
    # Rows of `frame` whose every cell is empty: neither good nor bad, and not counted.
    blank: int = 0


def duplicate_columns(spec: ImportSpec) -> list[str]:
    """The columns two rows of a file may not share: the key, then the other identity columns."""
    return ["key", *_identity_columns(spec)]


def _value_hashes(good: pd.DataFrame, spec: ImportSpec) -> dict[str, np.ndarray]:
    return {
        c: pd.util.hash_pandas_object(good[c], index=False).to_numpy()
        for c in duplicate_columns(spec)
    }


def prepare_chunk(
    frame: pd.DataFrame, *, spec: ImportSpec, state: ChunkState
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate one chunk and decide its duplicates as if no row were refused when written;
    return its good rows (STAGE_COLUMNS) and rejected rows with reasons."""
    checked = check_chunk(frame, spec=spec, state=state)
    duplicate, duplicates = decide_duplicates(
        checked.good,
        checked.hashes,
        spec=spec,
        refused=np.zeros(len(checked.good), dtype=bool),
        state=state,
    )
    kept = ~duplicate
    remember_kept(checked.good, checked.hashes, spec=spec, kept=kept, state=state)
    bad = _with_write_rejections(checked.bad, checked.frame, checked.first_row, duplicates)
    return checked.good[kept], bad


# A row's reasons share its one reason cell: each is a sentence of its own, and only the last
# keeps its full stop ("Invalid email; Gender must be 男/女 or male/female; Custom field '鞋码'
# must be a number."). REASON_MARK ends each reason while a chunk collects them.
REASON_SEPARATOR = "; "
REASON_MARK = "\x1f"
_REASON_END_RE = re.compile(r"[.。]*\x1f")


def join_reasons(reasons: Iterator[str] | list[str]) -> str:
    """A row's reasons in its one reason cell."""
    texts = [str(reason) for reason in reasons if reason]
    return REASON_SEPARATOR.join([*(t.rstrip(".。") for t in texts[:-1]), *texts[-1:]])


def _marked_reasons(marked: pd.Series) -> pd.Series:
    """Reasons collected with REASON_MARK after each, as join_reasons writes them."""
    return marked.str.rstrip(REASON_MARK).str.replace(_REASON_END_RE, REASON_SEPARATOR, regex=True)


def _too_many_cells(columns: int, past: list[str]) -> str:
    """Why a row with cells past the header's columns is refused, naming those cells."""
    return _(
        "This row has %(cells)s cells but the header has %(columns)s columns (extra: "
        "%(extra)s). Put a value that contains the separator in double quotes."
    ) % {
        "cells": columns + len(past),
        "columns": columns,
        "extra": pgettext("list separator", ", ").join(f"“{cell}”" for cell in past),
    }


def check_chunk(frame: pd.DataFrame, *, spec: ImportSpec, state: ChunkState) -> CheckedChunk:
    """Validate one chunk, leaving its duplicates undecided.

    Reads nothing that the writer changes (only the row offset moves), so it may run in another
    thread while the previous chunk is written.
    """
    frame = frame.reset_index(drop=True)
    n = len(frame)
    # Rows with more cells than the header (a value with an unquoted separator shifts the
    # cells after it): refused with only that reason, their other checks read shifted cells.
    past = frame.pop(EXTRA_CELLS) if EXTRA_CELLS in frame.columns else None
    wide = np.zeros(n, dtype=bool) if past is None else (past != "").to_numpy(dtype=bool)
    # Skipped, yet numbered: the rows after them keep their number in the file.
    blank = _blank_rows(frame) & ~wide
    out = pd.DataFrame(index=frame.index)
    # Row 1 is the header, unless blank rows above it (counted in the initial offset) push it down.
    first_row = state.offset + 2
    out["rn"] = np.arange(first_row, first_row + n)
    state.offset += n
    for header, target in spec.mapping.items():
        if header in frame.columns:
            out[target] = _stripped(frame[header].astype(str))
    for column in [*TARGETS, *(f"{CUSTOM_PREFIX}{k}" for k in spec.custom_keys)]:
        if column not in out.columns:
            out[column] = ""
    errors = np.full(n, "", dtype=object)
    key_missing = (out[spec.key] == "").to_numpy()

    def reject(mask: pd.Series | np.ndarray, message: str) -> None:
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            errors[mask] = errors[mask] + message + REASON_MARK

    # Only mapped columns are checked: the others are empty in every row.
    mapped = set(spec.mapping.values())
    for column in mapped:
        cells = out[column]
        # PostgreSQL cannot store U+0000 (COPY would stop the job); one search over the joined
        # column spares a per-cell scan of the columns that have none, nearly all of them.
        if "\x00" in "".join(cells.tolist()):
            has_nul = cells.str.contains("\x00", regex=False).to_numpy(dtype=bool)
            reject(
                has_nul,
                _("%(field)s contains the NUL character (U+0000).")
                % {"field": _target_label(column)},
            )
            # Emptied so that the checks below do not add reasons about the same cell.
            out[column] = cells.where(~has_nul, "")

    if "phone" in mapped:
        phones = _normalise_phones(out["phone"])
        # Excel shows a long number in a "General" column as 1.38001E+10 and writes a CSV so:
        # the last digits are gone, and only the operator can get them back.
        scientific = (
            phones.isna() & out["phone"].str.fullmatch(SCIENTIFIC_NUMBER_RE).astype(bool)
        ).to_numpy(dtype=bool)
        reject(
            scientific,
            _(
                "The phone number was saved by Excel in scientific notation (like 1.38001E+10), "
                "which loses its last digits. In Excel, format the phone column as Text or as "
                "the number format “0”, save the file again and upload it again."
            ),
        )
        reject(phones.isna().to_numpy(dtype=bool) & ~scientific, _("Invalid phone number."))
        out["phone"] = phones.fillna("")

    if "email" in mapped:
        emails = out["email"].str.lower()
        reject(~_valid_emails(emails), _("Invalid email."))
        out["email"] = emails

    for column, limit in MAX_LENGTHS.items():
        if column in mapped and column != "phone":
            reject(
                out[column].str.len() > limit,
                _("%(field)s is longer than %(limit)s characters.")
                % {"field": TARGETS[column], "limit": limit},
            )

    if "gender" in mapped:
        gender_raw = out["gender"].str.lower()
        genders = gender_raw.map(GENDERS)
        reject((gender_raw != "") & genders.isna(), _("Gender must be 男/女 or male/female."))
        out["gender"] = genders.fillna("")

    if "source" in mapped:
        # A source written as the list and the export show it (导入, Import …), in any of the
        # site's languages, is stored as its code: an exported file imports back unchanged.
        # Looked up once per distinct value; a client's own word stays as it is.
        sources = out["source"]
        codes = {v: code for v in sources.unique() if v and (code := source_from_label(v)) != v}
        if codes:
            out["source"] = sources.replace(codes)

    if "birthday" in mapped:
        birthdays, text = _normalise_birthdays(out["birthday"])
        has_birthday = out["birthday"] != ""
        reject(has_birthday & birthdays.isna(), _("Birthday is not a date like 1990-05-17."))
        reject(birthdays > pd.Timestamp(timezone.localdate()), _("Birthday is in the future."))
        out["birthday"] = text.where(birthdays.notna(), "")

    if "lifecycle_stage" in mapped:
        stage_raw = out["lifecycle_stage"].str.lower()
        stages = stage_raw.map(state.stages)
        reject((stage_raw != "") & stages.isna(), _("Unknown lifecycle stage."))
        out["lifecycle_stage"] = stages.fillna("")

    if "tags" in mapped:
        tags = out["tags"]
        messy = tags.str.contains(r"[,，、]|\s\||\|\s|^\||\|$", regex=True)
        if messy.any():
            tidy = tags[messy].str.replace(TAG_SPLIT_RE, "|", regex=True)
            tags = tags.copy()
            tags[messy] = tidy.str.replace(r"\s*\|\s*", "|", regex=True).str.strip("| ")
        long_cell = tags.str.len() > TAG_NAME_LENGTH
        # A "group/name" is looked up, never created: only a plain name must fit a tag.
        too_long_tag = long_cell & tags.where(long_cell, "").str.split("|").map(
            lambda refs: any(
                len(r) > TAG_NAME_LENGTH and services.tag_ref_split(r) is None for r in refs
            )
        )
        reject(
            too_long_tag,
            _("A tag is longer than %(max)s characters.") % {"max": TAG_NAME_LENGTH},
        )
        unknown = _unknown_tags(tags, state)
        named = unknown != ""
        # One reason per row, not per distinct cell: a file may hold as many cells as rows.
        errors[named] = errors[named] + unknown[named] + REASON_MARK
        out["tags"] = tags

    out["attributes"] = _custom_attributes(out, spec, reject)

    reject(
        key_missing & ~blank,
        _("The key column “%(key)s” is empty.") % {"key": TARGETS[spec.key]},
    )
    if wide.any():
        errors[wide] = [
            _too_many_cells(len(frame.columns), json.loads(cells)) + REASON_MARK
            for cells in past[wide]
        ]
    ok = (errors == "") & ~blank
    refused = (errors != "") & ~blank
    out["key"] = out[spec.key]
    good = out.loc[ok, STAGE_COLUMNS]
    bad = frame.loc[refused].copy()
    bad.insert(0, "_row", out.loc[refused, "rn"])
    bad["_reason"] = _marked_reasons(pd.Series(errors[refused], index=bad.index, dtype=object))
    return CheckedChunk(
        frame=frame,
        first_row=first_row,
        good=good,
        bad=bad,
        hashes=_value_hashes(good, spec),
        blank=int(blank.sum()),
    )


def _blank_rows(frame: pd.DataFrame) -> np.ndarray:
    """The rows whose every cell is empty or spaces (the lines Excel leaves below a table),
    the same test as the upload's check for data rows."""
    blank = np.ones(len(frame), dtype=bool)
    for column in frame.columns:
        # Nearly always the first column settles every row of a chunk.
        rows = np.flatnonzero(blank)
        if not len(rows):
            break
        cells = frame[column].iloc[rows].fillna("").astype(str)
        blank[rows] = (cells.str.strip() == "").to_numpy(dtype=bool)
    return blank


def _unknown_tags(tags: pd.Series, state: ChunkState) -> np.ndarray:
    """For each tags cell, why its "group/name" tags that do not exist are refused ("" when
    they all exist).

    Split as the API splits them (contacts.services.tag_ref_split), and refused as the API
    refuses them: created in the import's group they would be near-duplicates of the
    operators' own tags.
    """
    found = np.full(len(tags), "", dtype=object)
    with_path = tags.str.contains("/", regex=False).to_numpy(dtype=bool)
    if not with_path.any():
        return found
    reasons: dict[str, str] = {}
    for cell in tags[with_path].unique():
        messages = []
        for ref in dict.fromkeys(cell.split("|")):
            path = services.tag_ref_split(ref)
            if path is None or path in state.tags:
                continue
            group, name = path
            if group not in state.tag_groups and ref in state.tag_names:
                continue  # a tag whose name has a "/" (_tag_named)
            if group in state.tag_groups:
                messages.append(
                    _("Unknown tag “%(tag)s”: the group “%(group)s” has no tag “%(name)s”.")
                    % {"tag": ref, "group": group, "name": name}
                )
            else:
                messages.append(
                    _("Unknown tag “%(tag)s”: there is no tag group “%(group)s”.")
                    % {"tag": ref, "group": group}
                )
        if messages:
            reasons[cell] = join_reasons(messages)
    if reasons:
        found[with_path] = tags[with_path].map(reasons).fillna("").to_numpy(dtype=object)
    return found


def _duplicate_reason(column: str) -> str:
    if column == "key":
        return _("Duplicate of an earlier row in this file (same key).")
    return _("Duplicate of an earlier row in this file (same %(field)s).") % {
        "field": TARGETS[column]
    }


def decide_duplicates(
    good: pd.DataFrame,
    hashes: dict[str, np.ndarray],
    *,
    spec: ImportSpec,
    refused: np.ndarray,
    state: ChunkState,
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Which of a chunk's valid rows are duplicates, with their row numbers and reasons.

    A key or another identity value claimed by two rows of the file: the first row written
    keeps it, in this chunk or an earlier one. A `refused` row (a value of it belongs to another
    contact) is never written, so it claims nothing: the next row with its key or values is
    judged on its own. It is reported as a duplicate itself when it is one (the value it shares
    with a row written before is then that row's, not another contact's).
    """
    columns = duplicate_columns(spec)
    values = {c: good[c].to_numpy(dtype=object) for c in columns}
    valid = np.ones(len(good), dtype=bool)
    duplicate = _duplicates(values, hashes, valid=valid, state=state, refused=refused)
    hit = np.logical_or.reduce([duplicate[c] for c in columns])
    rows = good["rn"].to_numpy()
    reasons = [
        (int(rows[i]), join_reasons(_duplicate_reason(c) for c in columns if duplicate[c][i]))
        for i in np.flatnonzero(hit)
    ]
    return hit, reasons


def _rejections(
    taken: list[tuple[int, str]], duplicates: list[tuple[int, str]]
) -> list[tuple[int, str]]:
    """Refused rows and duplicates in file order; a duplicate gives only that reason."""
    duplicated = {rn for rn, _reason in duplicates}
    return sorted([*((rn, r) for rn, r in taken if rn not in duplicated), *duplicates])


def remember_kept(
    good: pd.DataFrame,
    hashes: dict[str, np.ndarray],
    *,
    spec: ImportSpec,
    kept: np.ndarray,
    state: ChunkState,
) -> None:
    """Record the identity values of the rows written, for the duplicate checks of later chunks."""
    for column in duplicate_columns(spec):
        filled = (good[column] != "").to_numpy(dtype=bool)
        state.remember(column, hashes[column][kept & filled])


# Passes of the vectorised duplicate check before the rest of a chunk is decided row by row.
DUPLICATE_PASSES = 8


def _duplicates(
    values: dict[str, np.ndarray],
    hashes: dict[str, np.ndarray],
    *,
    valid: np.ndarray,
    state: ChunkState,
    refused: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per identity column, the valid rows whose value an earlier row that is finally kept has.

    A row rejected for any reason, a duplicate in another column included, claims nothing: the
    next row with its key stays valid. A `refused` row is valid but not kept (it is refused
    for another reason): it may be a duplicate, and claims nothing. Whether a row is kept
    depends only on the rows before it, so each pass settles at least the next undecided row;
    real files settle in two passes.
    """
    filled = {c: v != "" for c, v in values.items()}
    # Earlier chunks hold only rows that were kept: a value seen there is final.
    candidate = valid.copy() if refused is None else valid & ~refused
    earlier: dict[str, np.ndarray] = {}
    for column in values:
        earlier[column] = filled[column] & state.seen_before(column, hashes[column])
        candidate &= ~earlier[column]
    positions = np.arange(len(valid))
    # Each value as an integer code, once: the passes below are then plain array work (this
    # runs in the writing thread, between two chunks).
    codes = {c: pd.factorize(v)[0] for c, v in values.items()}

    def pass_(kept: np.ndarray) -> dict[str, np.ndarray]:
        found = {}
        for column, column_codes in codes.items():
            claims = kept & filled[column]
            claimed, first_claim = np.unique(column_codes[claims], return_index=True)
            owner = np.full(len(column_codes) + 1, len(valid))
            owner[claimed] = positions[claims][first_claim]
            found[column] = filled[column] & (owner[column_codes] < positions)
        return found

    kept = candidate
    for _pass in range(DUPLICATE_PASSES):
        found = pass_(kept)
        settled = candidate & ~np.logical_or.reduce(list(found.values()))
        if (settled == kept).all():
            return {c: valid & (earlier[c] | found[c]) for c in values}
        kept = settled
    # A long chain (each row blocked by the one before in another column): decide in order.
    kept = np.zeros(len(valid), dtype=bool)
    taken: dict[str, set] = {c: set() for c in values}
    for row in np.flatnonzero(candidate):
        cells = [(c, values[c][row]) for c in values if filled[c][row]]
        if all(v not in taken[c] for c, v in cells):
            kept[row] = True
            for c, v in cells:
                taken[c].add(v)
    found = pass_(kept)
    return {c: valid & (earlier[c] | found[c]) for c in values}


# What separates the options of a multiple-choice cell: the ASCII and full-width commas and
# semicolons and the enumeration comma (、) that Chinese spreadsheets use, and "|", which the
# export writes between them.
MULTI_CHOICE_SPLIT_RE = re.compile(r"[,，、;；|]")


def _multi_choice_items(raw: str, choices: list[str]) -> list[str]:
    """The options of a multiple-choice cell; a cell that is one whole choice (one that contains
    a separator itself) stays that choice."""
    text = raw.strip()
    if text in choices:
        return [text]
    return [item.strip() for item in MULTI_CHOICE_SPLIT_RE.split(text) if item.strip()]


def _custom_attributes(out: pd.DataFrame, spec: ImportSpec, reject) -> pd.Series:
    result = pd.Series("", index=out.index, dtype=object)
    if not spec.custom_keys:
        return result
    definitions = _custom_fields()
    # In the order of the contact form, so that a row's reasons come in the same order
    # whatever order the mapping was stored in (PostgreSQL's jsonb sorts its keys).
    order = {key: position for position, key in enumerate(definitions)}
    keys = sorted(spec.custom_keys, key=lambda key: (order.get(key, len(order)), key))
    columns = [f"{CUSTOM_PREFIX}{k}" for k in keys]
    filled = (out[columns] != "").any(axis=1)
    validate = _custom_validator()
    multi = {
        key: [str(c) for c in definitions[key].choices or []]
        for key in keys
        if key in definitions and definitions[key].kind == CustomFieldKind.MULTI_CHOICE
    }
    yes_no = {
        key: definitions[key].label or key
        for key in keys
        if key in definitions and definitions[key].kind == CustomFieldKind.BOOLEAN
    }
    # Files repeat the same few values (a choice, yes/no): validate each combination once, and
    # each value of a refused combination once.
    outcomes: dict[tuple[str, ...], tuple[str, str]] = {}
    value_errors: dict[tuple[str, str], str] = {}
    for cells in out.loc[filled, columns].itertuples(index=False, name=None):
        if cells in outcomes:
            continue
        values: dict[str, Any] = {
            k: _multi_choice_items(v, multi[k]) if k in multi else v
            for k, v in zip(keys, cells, strict=True)
            if v != ""
        }
        try:
            cleaned = validate(values=values) if validate else values
        except (DomainError, ValidationError) as exc:
            outcomes[cells] = (
                "",
                _every_custom_error(values, cells, keys, validate, exc, value_errors, yes_no),
            )
        else:
            outcomes[cells] = (json.dumps(cleaned, ensure_ascii=False, default=str), "")
    if not outcomes:
        return result
    found = [outcomes[c] for c in out.loc[filled, columns].itertuples(index=False, name=None)]
    result[filled] = [attributes for attributes, _error in found]
    errors = pd.Series("", index=out.index, dtype=object)
    errors[filled] = [error for _attributes, error in found]
    for message in errors[errors != ""].unique():
        reject(errors == message, str(message))
    return result


def _error_text(exc: Exception) -> str:
    message = getattr(exc, "message", None) or "; ".join(getattr(exc, "messages", [str(exc)]))
    return str(message)


def _every_custom_error(
    values: dict[str, Any],
    cells: tuple[str, ...],
    keys: list[str],
    validate: Callable[..., dict],
    exc: Exception,
    value_errors: dict[tuple[str, str], str],
    yes_no: dict[str, str],
) -> str:
    """Every custom value of a refused row that is invalid, each in its field's own message.

    The service stops at the first invalid value; the operator fixing the rejected-rows file
    should see them all at once, so each value is validated again on its own. A yes/no field
    (`yes_no`: their labels by key) says which words a file may spell it with: the service's
    own message asks for true or false, as JSON gives it.
    """
    raw = dict(zip(keys, cells, strict=True))
    messages = []
    for key, value in values.items():
        memo = (key, raw[key])
        if memo not in value_errors:
            try:
                validate(values={key: value})
            except (DomainError, ValidationError) as value_exc:
                value_errors[memo] = (
                    _yes_no_error(yes_no[key]) if key in yes_no else _error_text(value_exc)
                )
            else:
                value_errors[memo] = ""
        if value_errors[memo]:
            messages.append(value_errors[memo])
    if not messages:
        # Refused as a whole though each value passes alone: the service's own reason.
        return _error_text(exc)
    # One reason cell: the messages' own full stops would read ".;" between them.
    return join_reasons(messages)


def _yes_no_error(label: str) -> str:
    return _("Custom field '%(field)s' must be yes or no (是/否, yes/no, true/false or 1/0).") % {
        "field": label
    }


# --- Preview ----------------------------------------------------------------------------------


@dataclass
class Preview:
    columns: list[tuple[str, str]]
    rows: list[dict[str, Any]]


def import_preview(*, job: Job, spec: ImportSpec, rows: int = PREVIEW_ROWS) -> Preview:
    """The first rows with the mapping applied and each row's errors, nothing stored."""
    source = SourceFile.from_params(job.params)
    frame = next(source.chunks(size=rows), pd.DataFrame())
    state = ChunkState.load(offset=source.leading_rows())
    checked = check_chunk(frame, spec=spec, state=state)
    # What the import would refuse when writing: identity values of other contacts, new rows
    # of erased people; then the duplicates among the rows that are left, as the import
    # decides them.
    owners = _owners(UPSERT_KEYS[spec.key], checked.good["key"].tolist())
    contact_ids = checked.good["key"].map(owners).fillna(0).astype("int64").to_numpy()
    taken = _taken(checked.good, contact_ids, _column_owners(checked.good, _identity_columns(spec)))
    if services.suppression_any():
        new = checked.good[(contact_ids == 0) & ~checked.good["rn"].isin(list(taken)).to_numpy()]
        taken.update(dict.fromkeys(_erased(new, _suppression_columns(spec)), _erased_reason()))
    refused = checked.good["rn"].isin(list(taken)).to_numpy(dtype=bool)
    duplicate, duplicates = decide_duplicates(
        checked.good, checked.hashes, spec=spec, refused=refused, state=state
    )
    # Refused rows show with their mapped values, duplicates as they were read (the import's
    # rejected-rows file has them so).
    good = checked.good[~duplicate]
    bad = _with_write_rejections(checked.bad, checked.frame, checked.first_row, duplicates)
    labels = dict(target_choices())
    # In the file's order: the mapping comes back from a JSON column, which on PostgreSQL
    # (jsonb) keeps its keys sorted by length, not in the order they were written.
    headers = [h for h in frame.columns if h in spec.mapping]
    headers += [h for h in spec.mapping if h not in headers]
    columns = [(spec.mapping[h], labels.get(spec.mapping[h], spec.mapping[h])) for h in headers]
    merged: list[dict[str, Any]] = []
    for _index, row in good.iterrows():
        values = {t: row.get(t, "") for t in spec.mapping.values() if t in row}
        if row["attributes"]:
            attrs = json.loads(row["attributes"])
            for k in spec.custom_keys:
                values[f"{CUSTOM_PREFIX}{k}"] = attrs.get(k, "")
        merged.append({"rn": int(row["rn"]), "values": values, "error": taken.get(row["rn"], "")})
    reverse = {h: t for h, t in spec.mapping.items()}
    for _index, row in bad.iterrows():
        values = {reverse[h]: row[h] for h in reverse if h in row}
        merged.append({"rn": int(row["_row"]), "values": values, "error": row["_reason"]})
    merged.sort(key=lambda r: r["rn"])
    for row in merged:
        row["cells"] = [row["values"].get(t, "") for t, _label in columns]
    return Preview(columns=columns, rows=merged)


# --- Writing ----------------------------------------------------------------------------------


@dataclass
class ChunkResult:
    created: int = 0
    # Matched contacts that gained or changed something / that already had everything.
    updated: int = 0
    unchanged: int = 0
    # Rows refused while writing (an identity value that belongs to another contact): each
    # row's number in the file and the reason, for the rejected-rows file.
    rejected: list[tuple[int, str]] = field(default_factory=list)
    contact_ids: list[int] = field(default_factory=list)
    # The ids numbered for new contacts, as [first, last] ranges (see CREATED_IDS).
    created_ranges: list[list[int]] = field(default_factory=list)


class TagResolver:
    """Tags as the file names them to tag ids: a "group/name" is found as the API finds it
    (contacts.services.tags_resolve), or, when no group has that name, as the whole name of an
    existing tag; a plain name is any group's tag of that name, created in the import group when
    there is none."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self._group: TagGroup | None = None

    def resolve(self, names: set[str]) -> dict[str, int]:
        missing = {n for n in names if n and n not in self.ids}
        paths = {n for n in missing if services.tag_ref_split(n) is not None}
        for ref in sorted(paths):
            try:
                (tag,) = services.tags_resolve(refs=[ref])
            except ValidationFailed as exc:
                tag = _tag_named(ref)
                if tag is not None:
                    self.ids[ref] = tag.pk
                    continue
                # check_chunk refused the rows whose tag did not exist when the import began:
                # this one was deleted since. Its rows are refused when the file is run again.
                raise ValidationFailed(
                    _(
                        "The tag “%(tag)s” was deleted while the file was being imported; "
                        "import the file again."
                    )
                    % {"tag": ref},
                    code="unknown_tag",
                ) from exc
            self.ids[ref] = tag.pk
        missing -= paths
        if missing:
            for tag in Tag.objects.filter(name__in=missing).order_by("group__position", "pk"):
                self.ids.setdefault(tag.name, tag.pk)
            for name in sorted(missing - set(self.ids)):
                if self._group is None:
                    self._group, _created = TagGroup.objects.get_or_create(name=IMPORT_TAG_GROUP)
                tag, _created = Tag.objects.get_or_create(group=self._group, name=name)
                self.ids[name] = tag.pk
        return self.ids

    def snapshot(self) -> tuple[dict[str, int], TagGroup | None]:
        return dict(self.ids), self._group

    def restore(self, saved: tuple[dict[str, int], TagGroup | None]) -> None:
        """Forget what a rolled-back transaction created."""
        self.ids, self._group = dict(saved[0]), saved[1]


def _tag_named(ref: str) -> Tag | None:
    """The tag whose whole name is a "group/name" that names no group ("2024/双11", as the
    export writes it), found as a plain name is; never created: a typo would make a tag.
    The same rule as _unknown_tags."""
    group, _name = services.tag_ref_split(ref) or ("", "")
    if TagGroup.objects.filter(name=group).exists():
        return None
    return Tag.objects.filter(name=ref).order_by("group__position", "pk").first()


def _tag_id_arrays(tags: pd.Series, resolver: TagResolver) -> pd.Series:
    values = [v for v in tags.unique() if v]
    ids = resolver.resolve({n for value in values for n in value.split("|")})
    arrays = {v: "{" + ",".join(str(ids[n]) for n in v.split("|")) + "}" for v in values}
    arrays[""] = ""
    return tags.map(arrays).astype(object)


STAGE_SQL = """
CREATE TEMP TABLE scrm_import_raw (
    rn bigint, key text, name text, nickname text, gender text, birthday date, phone text,
    email text, province text, city text, source text, channel_code text, lifecycle_stage text,
    unionid text, external_id text, attributes jsonb, tag_ids bigint[]
) ON COMMIT DROP
"""
# Columns that are also identities of the contact, with their identity kind.
IDENTITY_COLUMNS: dict[str, str] = {
    "phone": IdentityKind.PHONE,
    "email": IdentityKind.EMAIL,
    "unionid": IdentityKind.WECHAT_UNIONID,
    "external_id": IdentityKind.EXTERNAL_ID,
}
# Identity columns that are contact columns too: when a matched contact's phone or email
# changes, the old value stops being its identity, as contacts.services.contact_update does it.
REPLACED_IDENTITIES = ("phone", "email")
# Empty cells never overwrite what a contact already has.
UPDATED_COLUMNS = [*PROFILE_COLUMNS, "lifecycle_stage"]
# Tries per chunk when other transactions keep taking its identity values mid-write; each
# retry matches again, meeting the contacts that took them, so a second try nearly always
# succeeds.
CHUNK_ATTEMPTS = 3


class IdentityRaced(Exception):
    """Another transaction took an identity value of the chunk after the chunk checked it."""


def _taken_reason(column: str, owner: int) -> str:
    return _("%(field)s belongs to another contact (ID %(contact)s).") % {
        "field": TARGETS[column],
        "contact": owner,
    }


def _erased_reason() -> str:
    return _(
        "This person asked for their personal data to be erased; they cannot be imported again."
    )


def _erased_meanwhile_reason() -> str:
    return _("This contact was erased while the file was being imported.")


def _locked_out(
    gone: list[tuple[int, int, str]], spec: ImportSpec, reject_raced: bool
) -> list[tuple[int, str]]:
    """The reasons for the rows `gone` (row number, contact, key) whose contact
    contacts_lock_live did not lock: erased since the match, or merged away (their key is
    another contact's now: IdentityRaced, the chunk matches again, unless `reject_raced`)."""
    if not gone:
        return []
    merged = set(
        Contact.objects.filter(pk__in={pk for _rn, pk, _key in gone}).values_list("pk", flat=True)
    )
    if merged and not reject_raced:
        raise IdentityRaced
    owners = _owners(UPSERT_KEYS[spec.key], [key for _rn, pk, key in gone if pk in merged])
    return sorted(
        (
            rn,
            _raced_reason(spec.key, owners.get(key))
            if pk in merged
            else _erased_meanwhile_reason(),
        )
        for rn, pk, key in gone
    )


def _suppression_columns(spec: ImportSpec) -> dict[str, str]:
    """The mapped identity columns, the key included, with their identity kind."""
    mapped = set(spec.mapping.values())
    return {c: k for c, k in IDENTITY_COLUMNS.items() if c in mapped}


def _erased(rows: pd.DataFrame, columns: dict[str, str]) -> list[int]:
    """The row numbers of `rows` with an identity value of an erased person (a tombstone).

    Each distinct value is digested once per key (contacts.services.identities_suppressed),
    and the digests are looked up in batches: a chunk costs a few queries, not one per row.
    """
    wanted = {
        (kind, "", value)
        for column, kind in columns.items()
        for value in rows[column].unique().tolist()
        if value
    }
    found = services.identities_suppressed(wanted)
    if not found:
        return []
    hit = np.zeros(len(rows), dtype=bool)
    for column, kind in columns.items():
        values = [value for k, _app_id, value in found if k == kind]
        if values:
            hit |= rows[column].isin(values).to_numpy(dtype=bool)
    return sorted(int(rn) for rn in rows["rn"].to_numpy()[hit])


def _raced_reason(column: str, owner: int | None) -> str:
    if owner is None:
        return _(
            "%(field)s was taken by another program while this row was written; import the "
            "row again."
        ) % {"field": TARGETS[column]}
    return _(
        "%(field)s was given to another contact (ID %(contact)s) while this row was written; "
        "import the row again to update that contact."
    ) % {"field": TARGETS[column], "contact": owner}


@dataclass
class MatchedChunk:
    """A chunk whose rows know their contact: matched by key, or numbered as new.

    On PostgreSQL the rows live in the transaction's temporary table `scrm_import_stage`, each
    with the current owner of its other identity values (`<column>_owner`); elsewhere in `rows`
    (the chunk plus `contact_id` and `is_new`), with the owners in `owners`. The rows refused
    (another contact's value) or decided to be duplicates are out already, listed in `rejected`.
    """

    size: int
    new: int
    rows: pd.DataFrame | None = None
    owners: dict[str, dict[str, int]] = field(default_factory=dict)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    # PostgreSQL: the ids numbered for the new rows when matching, as [first, last] ranges
    # (rows refused after that keep their gap inside a range: no contact gets those ids).
    numbered: list[list[int]] = field(default_factory=list)


def _id_ranges(ids: list[int]) -> list[list[int]]:
    """Sorted ids as [first, last] ranges of consecutive ids."""
    ranges: list[list[int]] = []
    for pk in sorted(ids):
        if ranges and pk == ranges[-1][1] + 1:
            ranges[-1][1] = pk
        else:
            ranges.append([pk, pk])
    return ranges


def import_chunk_match(
    *,
    good: pd.DataFrame,
    spec: ImportSpec,
    resolver: TagResolver,
    state: ChunkState | None = None,
    hashes: dict[str, np.ndarray] | None = None,
    suppression: bool | None = None,
) -> MatchedChunk:
    """Find each row's contact by its key, and refuse the rows whose phone, email, unionid or
    external id (other than the key) belongs to another contact, like a PATCH of the profile
    (`identity_taken`), and the rows that would create a contact for an erased person (an
    identity value of theirs has a tombstone); call inside the transaction that writes the
    chunk.

    With `state`, `good` still holds the file's duplicate rows: they are decided among the rows
    not refused, after the rows earlier chunks kept (`decide_duplicates`; `hashes` as
    `CheckedChunk.hashes`). Without it the rows are taken as decided (`prepare_chunk`).

    `suppression`: whether there are tombstones at all (contacts.services.suppression_any),
    False skips the erasure check; None (what the import job passes) asks now, per chunk.
    """
    good = good.assign(tags=_tag_id_arrays(good["tags"], resolver))
    if state is not None and hashes is None:
        hashes = _value_hashes(good, spec)
    if suppression is None:
        suppression = services.suppression_any()
    settle = functools.partial(_settle, good, spec=spec, state=state, hashes=hashes)
    if connection.vendor == "postgresql":
        return _match_postgres(good, spec, settle, suppression)
    return _match_generic(good, spec, settle, suppression)


def _settle(
    good: pd.DataFrame,
    refused_rows: list[int],
    *,
    spec: ImportSpec,
    state: ChunkState | None,
    hashes: dict[str, np.ndarray] | None,
) -> list[tuple[int, str]]:
    """The duplicates among the rows of `good` that are not refused (none without `state`)."""
    if state is None or hashes is None:
        return []
    refused = good["rn"].isin(refused_rows).to_numpy(dtype=bool)
    _duplicate, duplicates = decide_duplicates(
        good, hashes, spec=spec, refused=refused, state=state
    )
    return duplicates


def import_chunk_apply(
    *, matched: MatchedChunk, spec: ImportSpec, collect: bool, reject_raced: bool = False
) -> ChunkResult:
    """Write a matched chunk: new contacts, changed fields, identities and tags, and an
    IMPORT_EVENT on the timeline of each existing contact it changes.

    A new row's key identity is claimed before anything else is written. When another
    transaction (an `identify` call) created that identity since the match, the row was judged
    as a new contact (whose other values are free, whether it changes anything, which rows
    duplicate it) while it is that contact's update: IdentityRaced, unless `reject_raced` (the
    chunk's last attempt), which rejects the row instead, before anything of it is written.

    The rows refused or found to be duplicates when matching are returned in `rejected`. Raises
    IdentityRaced when an identity value was taken after the check; the caller rolls the chunk
    back and runs it again.
    """
    if connection.vendor == "postgresql":
        return _apply_postgres(matched, spec, collect, reject_raced)
    return _apply_generic(matched, spec, collect, reject_raced)


def import_chunk_write(
    *,
    good: pd.DataFrame,
    spec: ImportSpec,
    resolver: TagResolver,
    collect: bool,
    state: ChunkState | None = None,
    hashes: dict[str, np.ndarray] | None = None,
    suppression: bool | None = None,
) -> ChunkResult:
    """Upsert one chunk of validated rows in one transaction.

    With `state`, the chunk's duplicates are decided in that transaction (see
    `import_chunk_match`), and the rows written are remembered in `state` once it commits.
    `suppression` as for `import_chunk_match`.
    """
    if good.empty:
        return ChunkResult()
    if state is not None and hashes is None:
        hashes = _value_hashes(good, spec)
    for attempt in range(1, CHUNK_ATTEMPTS + 1):
        saved = resolver.snapshot()
        try:
            with transaction.atomic():
                matched = import_chunk_match(
                    good=good,
                    spec=spec,
                    resolver=resolver,
                    state=state,
                    hashes=hashes,
                    suppression=suppression,
                )
                result = import_chunk_apply(
                    matched=matched,
                    spec=spec,
                    collect=collect,
                    reject_raced=attempt == CHUNK_ATTEMPTS,
                )
                if spec.job_id is not None and result.created_ranges:
                    _record_created(spec.job_id, result.created_ranges)
        except IdentityRaced as exc:
            resolver.restore(saved)
            if attempt == CHUNK_ATTEMPTS:
                raise IdentityRaced(
                    _(
                        "other programs kept taking phones, emails or ids of these rows while "
                        "they were written; run the import again"
                    )
                ) from exc
            logger.info("import chunk raced for an identity value, attempt %s", attempt)
            continue
        if state is not None and hashes is not None:
            refused = [rn for rn, _reason in result.rejected]
            written = ~good["rn"].isin(refused).to_numpy(dtype=bool)
            remember_kept(good, hashes, spec=spec, kept=written, state=state)
        return result
    raise AssertionError("unreachable")


def _record_created(job_id: int, ranges: list[list[int]]) -> None:
    """Add the ids a chunk created to its job's CREATED_IDS, in the chunk's transaction: the
    list names exactly the contacts committed (a redelivered job appends to it)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {Job._meta.db_table} SET params = jsonb_set(params, %s, "
                "COALESCE(params -> %s, '[]'::jsonb) || %s::jsonb) WHERE id = %s",
                [[CREATED_IDS], CREATED_IDS, json.dumps(ranges), job_id],
            )
        return
    # Elsewhere (SQLite) the chunk holds the database's write lock: nobody writes in between.
    params = Job.objects.filter(pk=job_id).values_list("params", flat=True).first()
    if params is not None:
        params[CREATED_IDS] = [*params.get(CREATED_IDS, []), *ranges]
        Job.objects.filter(pk=job_id).update(params=params)


def _match_postgres(
    good: pd.DataFrame,
    spec: ImportSpec,
    settle: Callable[[list[int]], list[tuple[int, str]]],
    suppression: bool,
) -> MatchedChunk:
    contact = Contact._meta.db_table
    identity = Identity._meta.db_table
    buffer = io.StringIO()
    good.to_csv(buffer, header=False, index=False)
    columns = ", ".join(c if c != "tags" else "tag_ids" for c in STAGE_COLUMNS)
    with connection.cursor() as cursor:
        # A server crash may lose the last chunks' commits (never corrupt them); re-running the
        # import is idempotent, and not waiting for each WAL flush saves a lot per chunk.
        cursor.execute("SET LOCAL synchronous_commit = off")
        # Statistics lag behind a bulk import (autovacuum has not seen the new rows yet), and a
        # planner that believes contacts or identities are small hash- or merge-joins each
        # chunk against all of them. A chunk is small next to the tables, so probing their
        # unique indexes row by row is always the right plan; this also spares the ANALYZE
        # runs that kept the statistics fresh before (a sixth of the database time).
        # The per-row probes add up to a cost that would have each chunk statement JIT-compiled,
        # which takes longer than running it.
        cursor.execute(
            "SELECT set_config('enable_hashjoin', 'off', true), "
            "set_config('enable_mergejoin', 'off', true), set_config('jit', 'off', true)"
        )
        cursor.execute(STAGE_SQL)
        raw = cursor.cursor  # psycopg 3 cursor under Django's wrapper
        with raw.copy(f"COPY scrm_import_raw ({columns}) FROM STDIN WITH (FORMAT csv)") as copy:
            copy.write(buffer.getvalue())
        del buffer
        # One pass matches each row by its key, numbers the new contacts (COALESCE is lazy, so
        # matched rows take no sequence value) and looks up who owns each of its other identity
        # values: the only lookup of those values. Refusing another contact's value, leaving
        # out of the insert a value the contact has, and telling whether a row brings a new
        # one all read these columns.
        # LATERAL and scalar LIMIT 1 probes use the unique index whatever the planner believes
        # about sizes.
        identity_columns = _identity_columns(spec)
        owners = "".join(
            f", (SELECT o.contact_id FROM {identity} o WHERE o.kind = %s AND o.app_id = '' "
            f"AND o.value = r.{column} LIMIT 1) AS {column}_owner"
            for column in identity_columns
        )
        cursor.execute(
            "CREATE TEMP TABLE scrm_import_stage ON COMMIT DROP AS "
            "SELECT r.*, i.contact_id IS NULL AS is_new, "
            f"COALESCE(i.contact_id, nextval(pg_get_serial_sequence('{contact}', 'id'))) "
            f"AS contact_id, false AS changed{owners} "
            f"FROM scrm_import_raw r LEFT JOIN LATERAL (SELECT contact_id FROM "
            f"{identity} WHERE kind = %s AND app_id = '' AND value = r.key LIMIT 1) i ON true",
            [*identity_columns.values(), UPSERT_KEYS[spec.key]],
        )
        cursor.execute("DROP TABLE scrm_import_raw")
        numbered: list[list[int]] = []
        if spec.job_id is not None:
            # Read before any row is refused, so that a refused row's id stays inside its
            # range instead of splitting it (one range per chunk, unless another session took
            # sequence values in between).
            cursor.execute(
                "SELECT min(contact_id), max(contact_id) FROM (SELECT contact_id, contact_id - "
                "row_number() OVER (ORDER BY contact_id) AS island FROM scrm_import_stage "
                "WHERE is_new) ids GROUP BY island ORDER BY 1"
            )
            numbered = [[first, last] for first, last in cursor.fetchall()]
        taken = _refuse_taken_postgres(cursor, identity_columns) if identity_columns else []
        if suppression:
            taken = sorted([*taken, *_refuse_erased_postgres(cursor, spec)])
        duplicates = settle([rn for rn, _reason in taken])
        if duplicates:
            # Duplicates that were refused too are gone already.
            cursor.execute(
                "DELETE FROM scrm_import_stage WHERE rn = ANY(%s)",
                [[rn for rn, _reason in duplicates]],
            )
        cursor.execute("SELECT count(*) FILTER (WHERE is_new), count(*) FROM scrm_import_stage")
        new, size = cursor.fetchone()
    return MatchedChunk(
        size=size, new=new, rejected=_rejections(taken, duplicates), numbered=numbered
    )


# A matched contact's profile before and after a staged row is applied (SQL over `c` and `s`).
_OLD_PROFILE_SQL = ", ".join(f"c.{c}" for c in UPDATED_COLUMNS) + ", c.attributes"
_NEW_ATTRIBUTES_SQL = "c.attributes || COALESCE(s.attributes, '{}'::jsonb)"
_NEW_COLUMN_SQL = [
    f"COALESCE(NULLIF(s.{c}, ''), c.{c})" if c != "birthday" else "COALESCE(s.birthday, c.birthday)"
    for c in UPDATED_COLUMNS
]
_NEW_PROFILE_SQL = ", ".join(_NEW_COLUMN_SQL) + f", {_NEW_ATTRIBUTES_SQL}"


def _apply_postgres(
    matched: MatchedChunk, spec: ImportSpec, collect: bool, reject_raced: bool
) -> ChunkResult:
    contact = Contact._meta.db_table
    identity = Identity._meta.db_table
    contact_tag = ContactTag._meta.db_table
    key_kind = UPSERT_KEYS[spec.key]
    columns = _identity_columns(spec)
    new, size = matched.new, matched.size
    rejected = matched.rejected
    updated = 0
    with connection.cursor() as cursor:
        if new < size:
            updated = _mark_changed_postgres(cursor, spec, columns)
        if updated:
            # Before anything is written: see _lock_changed_postgres.
            gone, gone_changed = _lock_changed_postgres(cursor, spec, reject_raced)
            if gone:
                size, updated = size - len(gone), updated - gone_changed
                rejected = sorted([*rejected, *gone])
        if new:
            # The key identities go in first (the foreign key to the contact is checked at
            # commit): a conflict here means someone else got the key since the match.
            cursor.execute(
                f"INSERT INTO {identity} (contact_id, kind, app_id, value, created_at) "
                "SELECT contact_id, %s, '', key, now() FROM scrm_import_stage WHERE is_new "
                "ON CONFLICT DO NOTHING",
                [key_kind],
            )
            if cursor.rowcount < new:
                # Such a row was matched as a new contact: its other values, whether it
                # changes anything and its duplicates were judged for one. Matched again, it
                # meets the contact that has its key.
                if not reject_raced:
                    raise IdentityRaced
                raced = _reject_raced_postgres(cursor, spec)
                new, size = new - len(raced), size - len(raced)
                rejected = sorted([*rejected, *raced])
        if new:
            cursor.execute(
                f"""
                INSERT INTO {contact} (
                    id, created_at, updated_at, name, nickname, gender, birthday, phone, email,
                    province, city, source, channel_code, utm_source, utm_medium, utm_campaign,
                    utm_content, utm_term, lifecycle_stage, attributes, first_seen_at
                )
                SELECT contact_id, now(), now(), COALESCE(name, ''), COALESCE(nickname, ''),
                    COALESCE(NULLIF(gender, ''), %s), birthday, COALESCE(phone, ''),
                    COALESCE(email, ''), COALESCE(province, ''), COALESCE(city, ''),
                    COALESCE(NULLIF(source, ''), %s), COALESCE(channel_code, ''), '', '', '',
                    '', '', COALESCE(NULLIF(lifecycle_stage, ''), %s),
                    COALESCE(attributes, '{{}}'::jsonb), now()
                FROM scrm_import_stage WHERE is_new
                """,
                [Gender.UNKNOWN, spec.default_source, "new"],
            )
        if updated:
            # Before the contacts, identities and tags change: it reads what they were.
            _record_events_postgres(cursor, spec, columns)
            for column in REPLACED_IDENTITIES:
                if column in columns:
                    # Driven from the stage through LIMIT 1 probes (never flattened into a
                    # join the planner could turn around): the stage has no statistics.
                    cursor.execute(
                        f"DELETE FROM {identity} WHERE id = ANY(ARRAY("
                        f"SELECT i.id FROM scrm_import_stage s "
                        f"CROSS JOIN LATERAL (SELECT c.{column} AS value FROM {contact} c "
                        f"WHERE c.id = s.contact_id LIMIT 1) old "
                        f"CROSS JOIN LATERAL (SELECT i.id FROM {identity} i WHERE i.kind = %s "
                        f"AND i.app_id = '' AND i.value = old.value "
                        f"AND i.contact_id = s.contact_id LIMIT 1) i "
                        f"WHERE s.changed AND s.{column} <> '' AND old.value <> '' "
                        f"AND s.{column} <> old.value))",
                        [columns[column]],
                    )
            assignments = ", ".join(
                f"{c} = COALESCE(NULLIF(s.{c}, ''), c.{c})"
                if c != "birthday"
                else "birthday = COALESCE(s.birthday, c.birthday)"
                for c in UPDATED_COLUMNS
            )
            cursor.execute(
                f"""
                UPDATE {contact} c SET {assignments},
                    attributes = {_NEW_ATTRIBUTES_SQL},
                    updated_at = now()
                FROM scrm_import_stage s
                WHERE c.id = s.contact_id AND s.changed
                  AND ROW({_OLD_PROFILE_SQL}) IS DISTINCT FROM ROW({_NEW_PROFILE_SQL})
                """
            )
        # Every row's key identity exists by now (claimed above, or the match itself).
        if columns:
            # Only values nobody owned at the match go in: of a matched row, only a changed
            # one has such a value, and its contact is locked. A value the row's contact already
            # owns stays out: PostgreSQL locks every row ON CONFLICT reaches, even when the DO
            # UPDATE's WHERE is false, and a re-import would lock (and write WAL for) every
            # identity of every matched contact. (Rows with another contact's values are gone.)
            branches = [
                f"SELECT s.contact_id, %s AS kind, s.{column} AS value FROM scrm_import_stage s"
                f" WHERE s.{column} <> '' AND s.{column}_owner IS NULL"
                for column in columns
            ]
            # One that conflicts now was taken since by another transaction: the no-op update
            # hands it back (xmax is 0 only on the rows this statement inserted). The WHERE
            # keeps a value the row's own contact gained meanwhile from counting.
            cursor.execute(
                f"WITH added AS (INSERT INTO {identity} (contact_id, kind, app_id, value, "
                f"created_at) SELECT contact_id, kind, '', value, now() "
                f"FROM ({' UNION ALL '.join(branches)}) ids "
                "ON CONFLICT (kind, app_id, value) "
                f"DO UPDATE SET contact_id = {identity}.contact_id "
                f"WHERE {identity}.contact_id <> EXCLUDED.contact_id RETURNING xmax) "
                "SELECT count(*) FROM added WHERE xmax <> 0",
                list(columns.values()),
            )
            if cursor.fetchone()[0]:
                raise IdentityRaced
        cursor.execute(
            f"""
            INSERT INTO {contact_tag} (contact_id, tag_id, source, actor_id, created_at)
            SELECT s.contact_id, t.tag_id, %s, %s::integer, now()
            FROM scrm_import_stage s
            CROSS JOIN LATERAL unnest(COALESCE(s.tag_ids, '{{}}') || %s::bigint[]) AS t(tag_id)
            WHERE (s.is_new OR s.changed){"" if spec.tag_ids else " AND s.tag_ids IS NOT NULL"}
            ON CONFLICT DO NOTHING
            """,
            [TagSource.IMPORT, spec.actor_id, spec.tag_ids],
        )
        ids: list[int] = []
        if collect:
            cursor.execute("SELECT contact_id FROM scrm_import_stage WHERE is_new OR changed")
            ids = [r[0] for r in cursor.fetchall()]
        cursor.execute("DROP TABLE scrm_import_stage")
    return ChunkResult(
        created=new,
        updated=updated,
        unchanged=size - new - updated,
        rejected=rejected,
        contact_ids=ids,
        created_ranges=matched.numbered if new else [],
    )


def _record_events_postgres(cursor: Any, spec: ImportSpec, columns: dict[str, str]) -> None:
    """Write one IMPORT_EVENT per changed contact of the stage, naming the job and what the row
    changes: the fields and custom fields whose value differs, the identities and the tags the
    contact gains. One statement, before the changes are applied."""
    contact = Contact._meta.db_table
    contact_tag = ContactTag._meta.db_table
    fields = "array_remove(ARRAY[{}], NULL)".format(
        ", ".join(
            f"CASE WHEN c.{c} IS DISTINCT FROM {new} THEN '{c}' END"
            for c, new in zip(UPDATED_COLUMNS, _NEW_COLUMN_SQL, strict=True)
        )
    )
    if spec.custom_keys:
        fields += (
            " || COALESCE((SELECT array_agg(a.key ORDER BY a.key) FROM "
            "jsonb_each(s.attributes) a WHERE c.attributes -> a.key IS DISTINCT FROM a.value), "
            "'{}')"
        )
    identities = (
        "to_jsonb(array_remove(ARRAY[{}]::text[], NULL))".format(
            ", ".join(
                f"CASE WHEN s.{column} <> '' AND s.{column}_owner IS NULL THEN '{kind}' END"
                for column, kind in columns.items()
            )
        )
        if columns
        else "'[]'::jsonb"
    )
    tags = (
        "(SELECT COALESCE(jsonb_agg(g.name || '/' || t.name ORDER BY g.name, t.name), "
        "'[]'::jsonb) FROM (SELECT DISTINCT u.tag_id FROM unnest(COALESCE(s.tag_ids, '{}') "
        "|| %s::bigint[]) AS u(tag_id)) a "
        f"JOIN {Tag._meta.db_table} t ON t.id = a.tag_id "
        f"JOIN {TagGroup._meta.db_table} g ON g.id = t.group_id "
        f"WHERE NOT EXISTS (SELECT 1 FROM {contact_tag} ct WHERE ct.contact_id = s.contact_id "
        "AND ct.tag_id = a.tag_id))"
    )
    cursor.execute(
        f"INSERT INTO {Event._meta.db_table} "
        "(event_id, contact_id, name, occurred_at, received_at, properties, value, source) "
        # Ids made by the server as new_event_id makes them (time first, then random bits).
        "SELECT lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')"
        " || substr(replace(gen_random_uuid()::text, '-', ''), 1, 20), "
        "s.contact_id, %s, now(), now(), jsonb_build_object('job_id', %s::bigint, "
        f"'file', %s::text, 'fields', to_jsonb(d.fields), 'identities', {identities}, "
        f"'tags', {tags}), NULL, %s "
        "FROM scrm_import_stage s "
        f"CROSS JOIN LATERAL (SELECT {fields} AS fields FROM {contact} c "
        "WHERE c.id = s.contact_id LIMIT 1) d WHERE s.changed",
        [IMPORT_EVENT, spec.job_id, spec.filename, spec.tag_ids, TagSource.IMPORT],
    )


def _reject_raced_postgres(cursor: Any, spec: ImportSpec) -> list[tuple[int, str]]:
    """Take the new rows whose key identity another transaction created since the match out
    of the stage; return their row numbers with reasons.

    Nothing of them is written yet (their key identity is the one that did not go in). The
    INSERT that met the other transaction's identity waited for it to commit, so this new
    statement sees who owns it now.
    """
    identity = Identity._meta.db_table
    key_kind = UPSERT_KEYS[spec.key]
    cursor.execute(
        "DELETE FROM scrm_import_stage s WHERE s.is_new AND NOT EXISTS (SELECT 1 FROM "
        f"{identity} i WHERE i.kind = %s AND i.app_id = '' AND i.value = s.key "
        "AND i.contact_id = s.contact_id) "
        f"RETURNING s.rn, (SELECT o.contact_id FROM {identity} o WHERE o.kind = %s "
        "AND o.app_id = '' AND o.value = s.key LIMIT 1)",
        [key_kind, key_kind],
    )
    return sorted((rn, _raced_reason(spec.key, owner)) for rn, owner in cursor.fetchall())


def _refuse_taken_postgres(cursor: Any, columns: dict[str, str]) -> list[tuple[int, str]]:
    """Take the rows whose identity values belong to another contact out of the stage.

    Returns their row numbers with reasons. Reads the owners the match looked up.
    """
    others = [f"NULLIF(s.{column}_owner, s.contact_id)" for column in columns]
    cursor.execute(
        "DELETE FROM scrm_import_stage s WHERE "
        + " OR ".join(f"s.{column}_owner <> s.contact_id" for column in columns)
        + f" RETURNING s.rn, {', '.join(others)}"
    )
    return sorted(
        (
            rn,
            join_reasons(
                _taken_reason(column, owner)
                for column, owner in zip(columns, owners, strict=True)
                if owner is not None
            ),
        )
        for rn, *owners in cursor.fetchall()
    )


def _refuse_erased_postgres(cursor: Any, spec: ImportSpec) -> list[tuple[int, str]]:
    """Take the new rows with an identity value of an erased person out of the stage; return
    their row numbers with the reason.

    Only the new rows' values come back to be digested (the digests are keyed HMACs, made in
    Python with the same keys as the tombstones): a re-import, whose rows mostly match
    contacts, digests next to nothing. Rows that match a contact are its update, whatever
    tombstones their values have (the person came back by themselves).
    """
    columns = _suppression_columns(spec)
    cursor.execute(
        "SELECT rn, "
        + ", ".join(f"COALESCE({column}, '')" for column in columns)
        + " FROM scrm_import_stage WHERE is_new"
    )
    rows = pd.DataFrame(cursor.fetchall(), columns=["rn", *columns], dtype=object)
    if rows.empty:
        return []
    erased = _erased(rows, columns)
    if erased:
        cursor.execute("DELETE FROM scrm_import_stage WHERE rn = ANY(%s)", [erased])
    return [(rn, _erased_reason()) for rn in erased]


def _mark_changed_postgres(cursor: Any, spec: ImportSpec, columns: dict[str, str]) -> int:
    """Flag the matched rows that change their contact; return how many there are.

    A row changes its contact when a field or custom field differs, or it brings an identity
    or a tag the contact does not have yet.
    """
    contact = Contact._meta.db_table
    contact_tag = ContactTag._meta.db_table
    # Nobody owned the value at the match (rows with another contact's values are gone). Tested
    # first: it reads only the staged row.
    new_identities = [f"(s.{column} <> '' AND s.{column}_owner IS NULL)" for column in columns]
    new_tags = (
        "EXISTS (SELECT 1 FROM unnest(COALESCE(s.tag_ids, '{}') || %s::bigint[]) AS t(tag_id) "
        f"WHERE NOT EXISTS (SELECT 1 FROM {contact_tag} ct WHERE ct.contact_id = s.contact_id "
        "AND ct.tag_id = t.tag_id))"
    )
    # The other tests are sub-plans run per staged row (a probe of a unique index): unlike a
    # join, the planner cannot turn them around on the strength of the stage's missing
    # statistics.
    # A contact erased since the match counts as changed: _lock_changed_postgres finds it
    # gone and rejects the row.
    new_profile = (
        f"COALESCE((SELECT ROW({_OLD_PROFILE_SQL}) IS DISTINCT FROM ROW({_NEW_PROFILE_SQL}) "
        f"FROM {contact} c WHERE c.id = s.contact_id), true)"
    )
    cursor.execute(
        "UPDATE scrm_import_stage s SET changed = true WHERE NOT s.is_new AND ("
        + " OR ".join([*new_identities, new_profile, new_tags])
        + ")",
        [spec.tag_ids],
    )
    return cursor.rowcount


def _lock_changed_postgres(
    cursor: Any, spec: ImportSpec, reject_raced: bool
) -> tuple[list[tuple[int, str]], int]:
    """Lock the contacts the matched rows change, and take the rows whose contact was erased
    (or merged away) since the match out of the stage; return their row numbers with reasons,
    and how many of them were changed rows.

    The chunk writes the update, identities, tags and IMPORT_EVENT of only these (an unchanged
    row writes nothing): a contact erased before the chunk commits would fail their foreign-key
    checks at commit, and the whole chunk with them. Locked first (KEY SHARE, id order, one
    statement: contacts_lock_live), before the chunk writes or waits for any other row, as
    erasures and merges lock their contacts first: an erasure of one of them waits for the
    chunk and then deletes what it wrote, or the chunk waits for it and leaves the row out.
    """
    cursor.execute("SELECT contact_id FROM scrm_import_stage WHERE changed")
    wanted = {pk for (pk,) in cursor.fetchall()}
    missing = wanted - set(contacts_lock_live(contact_ids=wanted))
    if not missing:
        return [], 0
    cursor.execute(
        "DELETE FROM scrm_import_stage WHERE NOT is_new AND contact_id = ANY(%s::bigint[]) "
        "RETURNING rn, contact_id, key, changed",
        [bigint_array(missing)],
    )
    rows = cursor.fetchall()
    gone = _locked_out([(rn, pk, key) for rn, pk, key, _changed in rows], spec, reject_raced)
    return gone, sum(1 for *_row, changed in rows if changed)


def _identity_columns(spec: ImportSpec) -> dict[str, str]:
    """The mapped identity columns other than the key (new rows claim it, matched rows have it)."""
    mapped = set(spec.mapping.values())
    return {c: k for c, k in IDENTITY_COLUMNS.items() if c in mapped and c != spec.key}


# SQLite allows 32,766 parameters per statement; 500 values per IN list stays well clear.
LOOKUP_BATCH = 500


def _owners(kind: str, values: list[str]) -> dict[str, int]:
    owners: dict[str, int] = {}
    for start in range(0, len(values), LOOKUP_BATCH):
        owners.update(
            Identity.objects.filter(
                kind=kind, app_id="", value__in=values[start : start + LOOKUP_BATCH]
            ).values_list("value", "contact_id")
        )
    return owners


def _column_owners(rows: pd.DataFrame, columns: dict[str, str]) -> dict[str, dict[str, int]]:
    """For each identity column, the contacts that own its values now."""
    return {
        column: _owners(kind, rows.loc[rows[column] != "", column].unique().tolist())
        for column, kind in columns.items()
    }


def _taken(
    rows: pd.DataFrame, contact_ids: np.ndarray, owners: dict[str, dict[str, int]]
) -> dict[int, str]:
    """The rows (by row number) whose identity values belong to another contact, with reasons."""
    reasons: dict[int, list[str]] = {}
    for column, owned in owners.items():
        owner = rows[column].map(owned).fillna(0).astype("int64").to_numpy()
        hit = (owner != 0) & (owner != contact_ids)
        for rn, other in zip(rows["rn"].to_numpy()[hit], owner[hit], strict=True):
            reasons.setdefault(int(rn), []).append(_taken_reason(column, int(other)))
    return {rn: join_reasons(texts) for rn, texts in reasons.items()}


def _match_generic(
    good: pd.DataFrame,
    spec: ImportSpec,
    settle: Callable[[list[int]], list[tuple[int, str]]],
    suppression: bool,
) -> MatchedChunk:
    existing = _owners(UPSERT_KEYS[spec.key], good["key"].tolist())
    contact_ids = good["key"].map(existing)
    rows = good.assign(is_new=contact_ids.isna(), contact_id=contact_ids.fillna(0).astype("int64"))
    # SQLite transactions are IMMEDIATE here (config.settings): the chunk holds the write lock
    # from its first statement, so no value checked now can be taken before it commits.
    owners = _column_owners(rows, _identity_columns(spec))
    taken = _taken(rows, rows["contact_id"].to_numpy(dtype="int64"), owners)
    if suppression:
        # Only rows that would create a contact: a matched row is its contact's update.
        new = rows[rows["is_new"].to_numpy(dtype=bool) & ~rows["rn"].isin(list(taken))]
        taken.update(dict.fromkeys(_erased(new, _suppression_columns(spec)), _erased_reason()))
    duplicates = settle(list(taken))
    gone = [*taken, *(rn for rn, _reason in duplicates)]
    if gone:
        rows = rows[~rows["rn"].isin(gone)]
    return MatchedChunk(
        size=len(rows),
        new=int(rows["is_new"].sum()),
        rows=rows,
        owners=owners,
        rejected=_rejections(list(taken.items()), duplicates),
    )


def _row_tag_ids(spec: ImportSpec, tags: str) -> set[int]:
    ids = set(spec.tag_ids)
    if tags:
        ids |= {int(t) for t in tags.strip("{}").split(",")}
    return ids


def _apply_generic(
    matched: MatchedChunk, spec: ImportSpec, collect: bool, reject_raced: bool
) -> ChunkResult:
    assert matched.rows is not None
    good = matched.rows
    rejected = matched.rejected
    now = timezone.now()
    key_kind = UPSERT_KEYS[spec.key]
    columns = _identity_columns(spec)
    owners = matched.owners
    is_new = good["is_new"].to_numpy(dtype=bool, copy=True)
    changes = _changes_generic(good[~is_new], spec, columns, owners, now)
    if changes.changed.any():
        # Before anything is written, as on PostgreSQL (_lock_changed_postgres).
        old = good[~is_new]
        wanted = set(old["contact_id"].to_numpy()[changes.changed].tolist())
        missing = wanted - set(contacts_lock_live(contact_ids=wanted))
        if missing:
            out = ~is_new & good["contact_id"].isin(list(missing)).to_numpy(dtype=bool)
            lost_rows = zip(
                good["rn"].to_numpy()[out].tolist(),
                good["contact_id"].to_numpy()[out].tolist(),
                good["key"].to_numpy()[out].tolist(),
                strict=True,
            )
            rejected = sorted([*rejected, *_locked_out(list(lost_rows), spec, reject_raced)])
            changes = changes.without(old["contact_id"].isin(list(missing)).to_numpy(dtype=bool))
            good, is_new = good[~out], is_new[~out]
    contacts = [
        Contact(
            name=r.name,
            nickname=r.nickname,
            gender=r.gender or Gender.UNKNOWN,
            birthday=dt.date.fromisoformat(r.birthday) if r.birthday else None,
            phone=r.phone,
            email=r.email,
            province=r.province,
            city=r.city,
            source=r.source or spec.default_source,
            channel_code=r.channel_code,
            lifecycle_stage_id=r.lifecycle_stage or "new",
            attributes=json.loads(r.attributes) if r.attributes else {},
            first_seen_at=now,
        )
        for r in good[is_new].itertuples(index=False)
    ]
    Contact.objects.bulk_create(contacts, batch_size=LOOKUP_BATCH)
    # Before any of them is deleted again (see CREATED_IDS).
    numbered = _id_ranges([c.pk for c in contacts])
    contact_ids = good["contact_id"].to_numpy(dtype="int64", copy=True)
    contact_ids[is_new] = [c.pk for c in contacts]
    if contacts:
        keys = good.loc[is_new, "key"].tolist()
        Identity.objects.bulk_create(
            [
                Identity(contact_id=c.pk, kind=key_kind, app_id="", value=k, created_at=now)
                for c, k in zip(contacts, keys, strict=True)
            ],
            batch_size=LOOKUP_BATCH,
            ignore_conflicts=True,
        )
        key_owners = _owners(key_kind, keys)
        lost = [c.pk for c, k in zip(contacts, keys, strict=True) if key_owners.get(k) != c.pk]
        if lost:
            # Someone else got the key since the match, as on PostgreSQL (SQLite's write lock
            # keeps other connections out: only a call inside this transaction can).
            if not reject_raced:
                raise IdentityRaced
            # The contacts created for those rows go (nothing refers to them yet).
            Contact.objects.filter(pk__in=lost).delete()
            gone = np.isin(contact_ids, lost)
            raced = zip(good["rn"].to_numpy()[gone], good["key"].to_numpy()[gone], strict=True)
            rejected = sorted(
                [
                    *rejected,
                    *((int(rn), _raced_reason(spec.key, key_owners.get(key))) for rn, key in raced),
                ]
            )
            good, is_new, contact_ids = good[~gone], is_new[~gone], contact_ids[~gone]
    good = good.assign(contact_id=contact_ids)

    _changes_write(changes)
    changed = changes.changed
    # Only the rows that create or change a contact write: an unchanged row's contact (not
    # locked) has its identities and tags already.
    writes = is_new.copy()
    writes[~is_new] = changed

    identities = []
    for column, ident_kind in columns.items():
        rows = good[(good[column] != "") & ~good[column].isin(list(owners[column]))]
        identities += [
            Identity(contact_id=cid, kind=ident_kind, app_id="", value=value, created_at=now)
            for cid, value in zip(rows["contact_id"], rows[column], strict=True)
        ]
    Identity.objects.bulk_create(identities, batch_size=LOOKUP_BATCH, ignore_conflicts=True)

    tag_links = [
        ContactTag(
            contact_id=cid,
            tag_id=tid,
            source=TagSource.IMPORT,
            actor_id=spec.actor_id,
            created_at=now,
        )
        for cid, tags in zip(good["contact_id"][writes], good["tags"][writes], strict=True)
        for tid in _row_tag_ids(spec, tags)
    ]
    ContactTag.objects.bulk_create(tag_links, batch_size=LOOKUP_BATCH, ignore_conflicts=True)
    created = int(is_new.sum())
    updated = int(changed.sum())
    ids_out: list[int] = []
    if collect:
        ids_out = [*contact_ids[is_new].tolist(), *contact_ids[~is_new][changed].tolist()]
    return ChunkResult(
        created=created,
        updated=updated,
        unchanged=len(good) - created - updated,
        rejected=rejected,
        contact_ids=ids_out,
        created_ranges=numbered if created else [],
    )


# A custom field the contact has no value for (a stored value may be None).
_ABSENT = object()


def _tag_names(spec: ImportSpec, cells: pd.Series) -> dict[int, str]:
    """Every tag the rows may add, by id, named as tag_added events name it (group/name)."""
    ids = set(spec.tag_ids)
    for cell in cells.unique():
        ids |= _row_tag_ids(spec, cell)
    return {t.pk: str(t) for t in Tag.objects.filter(pk__in=ids).select_related("group")}


@dataclass
class _Changes:
    """What the matched rows of a chunk change, worked out before anything is written."""

    changed: np.ndarray  # per matched row: whether it changes its contact
    contacts: list[int] = field(default_factory=list)  # per matched row: its contact
    updates: list[list[Any]] = field(default_factory=list)
    replaced: list[tuple[int, str, str]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def without(self, dropped: np.ndarray) -> "_Changes":
        """These changes less those of the matched rows `dropped` (a mask over them)."""
        ids = {pk for pk, drop in zip(self.contacts, dropped, strict=True) if drop}
        return _Changes(
            changed=self.changed[~dropped],
            contacts=[pk for pk in self.contacts if pk not in ids],
            updates=[u for u in self.updates if u[-1] not in ids],
            replaced=[r for r in self.replaced if r[0] not in ids],
            events=[e for e in self.events if e.contact_id not in ids],
        )


def _changes_generic(
    old: pd.DataFrame,
    spec: ImportSpec,
    columns: dict[str, str],
    owners: dict[str, dict[str, int]],
    now: dt.datetime,
) -> _Changes:
    """Work out the updates of the matched contacts whose fields change and an IMPORT_EVENT
    for each contact a row changes, and which rows change their contact (_changes_write
    writes them).

    A row changes its contact when a field or custom field differs, or it brings an identity
    or a tag the contact does not have yet (the same rule as the PostgreSQL path).
    """
    changed = np.zeros(len(old), dtype=bool)
    if not len(old):
        return _Changes(changed=changed)
    ids = old["contact_id"].unique().tolist()
    current: dict[int, dict[str, Any]] = {}
    tags: dict[int, set[int]] = {}
    for start in range(0, len(ids), LOOKUP_BATCH):
        batch = ids[start : start + LOOKUP_BATCH]
        for values in Contact.objects.filter(pk__in=batch).values(
            "pk", *UPDATED_COLUMNS, "attributes"
        ):
            birthday = values["birthday"]
            values["birthday"] = birthday.isoformat() if birthday else ""
            current[values["pk"]] = values
        for contact_id, tag_id in ContactTag.objects.filter(contact_id__in=batch).values_list(
            "contact_id", "tag_id"
        ):
            tags.setdefault(contact_id, set()).add(tag_id)
    updates = []
    replaced = []
    events = []
    tag_names = _tag_names(spec, old["tags"])
    for position, r in enumerate(old.itertuples(index=False)):
        before = current.get(r.contact_id)
        if before is None:
            # Erased since the match: taken as a change, the lock finds it gone.
            changed[position] = True
            continue
        after = {c: getattr(r, c) or before[c] for c in UPDATED_COLUMNS}
        patch = json.loads(r.attributes) if r.attributes else {}
        fields = [c for c in UPDATED_COLUMNS if after[c] != before[c]]
        fields += sorted(k for k, v in patch.items() if before["attributes"].get(k, _ABSENT) != v)
        if fields:
            updates.append(
                [*(getattr(r, c) for c in UPDATED_COLUMNS), r.attributes or "{}", now, r.contact_id]
            )
            replaced += [
                (r.contact_id, columns[c], before[c])
                for c in REPLACED_IDENTITIES
                if c in columns and before[c] and after[c] != before[c]
            ]
        identities = [
            k for c, k in columns.items() if getattr(r, c) and getattr(r, c) not in owners[c]
        ]
        tags_added = _row_tag_ids(spec, r.tags) - tags.get(r.contact_id, set())
        changed[position] = bool(fields or identities or tags_added)
        if changed[position]:
            properties = {
                "job_id": spec.job_id,
                "file": spec.filename,
                "fields": fields,
                "identities": identities,
                "tags": sorted(tag_names[t] for t in tags_added),
            }
            events.append(
                Event(
                    event_id=new_event_id(),
                    contact_id=r.contact_id,
                    name=IMPORT_EVENT,
                    occurred_at=now,
                    received_at=now,
                    properties=properties,
                    source=TagSource.IMPORT,
                )
            )
    return _Changes(
        changed=changed,
        updates=updates,
        replaced=replaced,
        events=events,
        contacts=old["contact_id"].tolist(),
    )


def _changes_write(changes: _Changes) -> None:
    """Write what _changes_generic worked out."""
    Event.objects.bulk_create(changes.events, batch_size=LOOKUP_BATCH)
    with connection.cursor() as cursor:
        if changes.replaced:
            cursor.executemany(
                f"DELETE FROM {Identity._meta.db_table} "
                "WHERE contact_id = %s AND kind = %s AND app_id = '' AND value = %s",
                changes.replaced,
            )
        if changes.updates:
            assignments = ", ".join(f"{c} = COALESCE(NULLIF(%s, ''), {c})" for c in UPDATED_COLUMNS)
            cursor.executemany(
                f"UPDATE {Contact._meta.db_table} SET {assignments}, "
                "attributes = json_patch(attributes, %s), updated_at = %s WHERE id = %s",
                changes.updates,
            )


# --- Running ----------------------------------------------------------------------------------


class ImportAlreadyStarted(ValidationFailed):
    """The import was started already (a second click, a resent form), or ended without
    starting (its upload expired): the job page says which."""


def import_start(*, job: Job, spec: ImportSpec, ip: str | None = None) -> Job:
    """Record the operator's choices on the job and enqueue it after commit.

    `ip`: the address the import was started from, for the audit entry the job writes.

    Started once however many times it is asked: the job is claimed by one conditional UPDATE
    (still queued, not yet started), not by the caller's copy of it, which two requests at once
    (a double click) both loaded unstarted. The one whose UPDATE found the job enqueues it;
    any other raises ImportAlreadyStarted.
    """
    from contacts import tasks

    if job.status != JobStatus.QUEUED or job.params.get("started"):
        raise ImportAlreadyStarted(_("This import has already been started."))
    params = {
        **job.params,
        "mapping": spec.mapping,
        "key": spec.key,
        "tag_ids": spec.tag_ids,
        "started": True,
        "language": translation.get_language(),
        "ip": ip or None,
    }
    with transaction.atomic():
        # A second UPDATE waits for the first's row lock (PostgreSQL) or write lock (SQLite),
        # then finds the row started and changes nothing. "started" is only ever set to True.
        claimed = (
            Job.objects.filter(pk=job.pk, kind=JOB_KIND, status=JobStatus.QUEUED)
            .exclude(params__has_key="started")
            .update(params=params)
        )
        if not claimed:
            raise ImportAlreadyStarted(_("This import has already been started."))
        job_id = job.pk
        transaction.on_commit(lambda: tasks.import_contacts.delay(job_id))
    job.params = params
    return job


def _rejected_path(job: Job) -> str:
    return f"{IMPORT_DIR}/job-{job.pk}-rejected.csv"


def import_run(*, job_id: int) -> dict[str, Any] | None:
    """Run a started import to the end, recording progress, counts and rejected rows.

    One run at a time: a message redelivered while a worker still runs the job (acks_late, a
    broker's visibility timeout shorter than the import) returns at once and changes nothing;
    one redelivered after that worker died runs the job again from the start (the chunks
    committed before count as unchanged).
    """
    job = Job.objects.filter(pk=job_id, kind=JOB_KIND).first()
    if job is None or job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        return None  # a redelivered message for a finished job changes nothing
    with _run_claim(job.pk) as claimed:
        if not claimed:
            logger.info("import job %s is being run by another worker; not run again", job.pk)
            return None
        # The run that held the claim before this one may have finished the job meanwhile.
        job.refresh_from_db()
        if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            return None
        with translation.override(job.params.get("language") or settings.LANGUAGE_CODE):
            return _import_run(job)


# Class key of the PostgreSQL advisory lock an import run holds on its job (the second key is
# the job id): "IMPR", a space apart from the other advisory locks of this database.
RUN_LOCK_CLASS = 0x494D_5052


@contextlib.contextmanager
def _run_claim(job_id: int) -> Iterator[bool]:
    """Claim the run of a job: True for the one run that then holds it until it ends, False
    while another run holds it.

    PostgreSQL: a transaction-scoped advisory lock taken on a connection of its own, whose
    transaction stays open for the run (the run itself commits chunk by chunk on its own
    connection; a session-level lock would stay with a pooler's server connection in
    transaction mode after its holder is gone). Elsewhere (SQLite, on one machine by nature):
    an exclusive flock on a file beside the upload. Either way, a worker that dies loses the
    claim with its connection or process, so the message redelivered then runs the job.
    """
    if connection.vendor == "postgresql":
        holder = connections.create_connection(connection.alias)
        try:
            holder.set_autocommit(False)
            with holder.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_try_advisory_xact_lock(%s, %s)",
                    [RUN_LOCK_CLASS, (job_id + 2**31) % 2**32 - 2**31],
                )
                claimed = bool(cursor.fetchone()[0])
            yield claimed
        finally:
            try:
                holder.rollback()
            except DatabaseError:
                pass  # the connection is gone, and its lock with it
            finally:
                holder.close()
        return
    path = media_path(f"{IMPORT_DIR}/job-{job_id}.run")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            # Removed while still held: a run that opened it meanwhile takes a lock on a file
            # nobody else will open, then finds the job finished (import_run re-reads it).
            path.unlink(missing_ok=True)


def _import_run(job: Job) -> dict[str, Any]:
    params = job.params
    source = SourceFile.from_params(params)
    spec = ImportSpec(
        mapping=params["mapping"],
        key=params["key"],
        tag_ids=list(
            Tag.objects.filter(pk__in=params.get("tag_ids", [])).values_list("pk", flat=True)
        ),
        actor_id=job.created_by_id,
        job_id=job.pk,
        filename=params.get("filename", ""),
    )
    jobs.job_start(job_id=job.pk, total=source.estimate_rows())
    state = ChunkState.load(offset=source.leading_rows())
    resolver = TagResolver()
    counts = {"created": 0, "updated": 0, "unchanged": 0, "rejected": 0, "rows": 0}
    touched: list[int] = []
    rejected_relative = _rejected_path(job)
    rejected_path = media_path(rejected_relative)
    rejected_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with rejected_path.open("w", encoding="utf-8-sig", newline="") as rejected_file:
            writer = csv.writer(rejected_file)
            headers = [_header_cell(h, i) for i, h in enumerate(params["headers"])]
            writer.writerow([_("Row"), *headers, _("Reason")])
            chunks = _checked_chunks(source, spec, state)
            # Custom fields are validated against the database, which a second thread would
            # see through its own connection (outside this job's transactions): read ahead
            # only when checking a chunk is pure pandas. (The duplicates, which depend on
            # what the chunks before were finally allowed to write, are decided here.)
            if not spec.custom_keys:
                chunks = _read_ahead(chunks)
            for checked in chunks:
                # With DEBUG on (the demo), Django keeps every statement of the job with its
                # parameters (a chunk's arrays of ids and digests, megabytes each) until 9,000
                # have piled up: a request's log is reset per request, a job's never is. (Not
                # while something asked for the log: CaptureQueriesContext forces it on.)
                if not connection.force_debug_cursor:
                    reset_queries()
                collect = len(touched) <= SIGNAL_LIMIT
                result = import_chunk_write(
                    good=checked.good,
                    spec=spec,
                    resolver=resolver,
                    collect=collect,
                    state=state,
                    hashes=checked.hashes,
                    # Each chunk asks, in its own transaction, whether anyone was ever erased
                    # (one indexed probe): with no tombstone no row is digested, and an
                    # erasure made while a long file is imported applies to its next chunk.
                    suppression=None,
                )
                if collect:
                    touched += result.contact_ids
                bad = _with_write_rejections(
                    checked.bad, checked.frame, checked.first_row, result.rejected
                )
                if not bad.empty:
                    bad.to_csv(rejected_file, header=False, index=False)
                counts["created"] += result.created
                counts["updated"] += result.updated
                counts["unchanged"] += result.unchanged
                counts["rejected"] += len(bad)
                counts["rows"] += len(checked.frame) - checked.blank
                jobs.job_progress(job_id=job.pk, done=counts["rows"])
    except Exception as exc:
        logger.exception("import job %s failed", job.pk)
        if not counts["rejected"]:
            rejected_path.unlink(missing_ok=True)
        jobs.job_fail(
            job_id=job.pk,
            error=_("Stopped after %(rows)s rows: %(error)s")
            % {"rows": counts["rows"], "error": exc},
            result={**counts, "rejected_file": rejected_relative if counts["rejected"] else ""},
        )
        _audit(job, counts, failed=True)
        # The chunks committed before the failure stay: their contacts did change.
        _signal_changed(touched, counts)
        return counts
    if not counts["rejected"]:
        rejected_path.unlink(missing_ok=True)
    jobs.job_progress(job_id=job.pk, done=counts["rows"], total=counts["rows"])
    result = {**counts, "rejected_file": rejected_relative if counts["rejected"] else ""}
    jobs.job_finish(job_id=job.pk, result=result, output_file=result["rejected_file"])
    _audit(job, counts, failed=False)
    _signal_changed(touched, counts)
    return result


def _checked_chunks(
    source: SourceFile, spec: ImportSpec, state: ChunkState
) -> Iterator[CheckedChunk]:
    """Each chunk of the file, validated; its duplicates are decided when it is written."""
    for frame in source.chunks():
        yield check_chunk(frame, spec=spec, state=state)


def _with_write_rejections(
    bad: pd.DataFrame, frame: pd.DataFrame, first_row: int, rejected: list[tuple[int, str]]
) -> pd.DataFrame:
    """The chunk's rejected rows, those refused while writing included, in file order."""
    if not rejected:
        return bad
    late = frame.iloc[[rn - first_row for rn, _reason in rejected]].copy()
    late.insert(0, "_row", [rn for rn, _reason in rejected])
    late["_reason"] = [reason for _rn, reason in rejected]
    if bad.empty:
        return late
    return pd.concat([bad, late]).sort_values("_row", kind="stable")


def _read_ahead(items: Iterator[T]) -> Iterator[T]:
    """Yield from `items`, producing the next item in a thread while the caller works.

    Reading and validating a chunk is Python work; writing the previous one is mostly waiting
    on the database, which releases the GIL: overlapping them takes the Python part (about a
    fifth of an import) off the clock on a machine with two cores.
    """
    handoff: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    # The active language is per thread: the rejection reasons written here must be in the
    # language of the job (the uploader's), not the default the new thread starts in.
    language = translation.get_language()

    def put(message: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                handoff.put(message, timeout=0.1)
            except queue.Full:
                continue
            return True
        return False

    def produce() -> None:
        try:
            with translation.override(language):
                for item in items:
                    if not put(("item", item)):
                        return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(("error", exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="contact-import-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()


def _audit(job: Job, counts: dict[str, int], *, failed: bool) -> None:
    AuditLog.objects.create(
        actor_id=job.created_by_id,
        action="contacts_import_failed" if failed else "contacts_import",
        object_type="job",
        object_id=str(job.pk),
        details={
            "filename": job.params.get("filename", ""),
            "key": job.params.get("key", ""),
            "tag_ids": job.params.get("tag_ids", []),
            **counts,
        },
        # Where the import was started from (the worker that writes this has no request).
        ip=job.params.get("ip") or None,
    )


def _signal_changed(touched: list[int], counts: dict[str, int]) -> None:
    """Tell higher apps which contacts the import changed (every chunk has committed)."""
    changed = counts["created"] + counts["updated"]
    if changed > SIGNAL_LIMIT or len(touched) > SIGNAL_LIMIT:
        # `touched` stopped growing at the limit: receivers rebuild rather than re-evaluate.
        contacts_changed_in_bulk.send(sender=Contact, count=changed)
        return
    ids = sorted(set(touched))
    for start in range(0, len(ids), SIGNAL_BATCH):
        contact_changed.send(sender=Contact, contact_ids=ids[start : start + SIGNAL_BATCH])

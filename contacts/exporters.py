"""Contact export to CSV (UTF-8 with BOM, so Excel shows Chinese) and .xlsx, in a background job.

Rows are streamed by keyset over ids (never OFFSET), a batch at a time, so the export of a
million contacts keeps one batch in memory. Phones and emails are masked unless the user who
asked may see personal data; every export is audit-logged.
"""

import csv
import datetime as dt
import logging
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import QuerySet
from django.http import QueryDict
from django.utils import timezone, translation
from django.utils.translation import gettext as _
from django.utils.translation import pgettext

from contacts.bulk import bulk_target
from contacts.filters import ContactFilter, contact_filter_checked
from contacts.labels import source_label
from contacts.models import PROFILE_COLUMNS, Contact, ContactTag, CustomField, Gender, Stage
from contacts.pii import can_view_personal_data, mask_email, mask_phone
from contacts.selectors import contact_visible_to
from core import jobs
from core.errors import ValidationFailed
from core.ids import parse_id
from core.models import AuditLog, Job, JobStatus

logger = logging.getLogger(__name__)

JOB_KIND = "contact_export"
EXPORT_DIR = "exports"
EXPORT_PERMISSION = "contacts.export_contact"
FORMATS = ("csv", "xlsx")
# Contacts per keyset batch: one query for the rows and one for their tags; 2,000 rows keep
# both queries under SQLite's parameter limit and a batch well under 10 MB.
BATCH = 2_000
# Exports above this size are worth telling the operator they will take a while.
LARGE_EXPORT = 5_000
FILTER_KEYS = tuple(ContactFilter.base_filters)
# Excel opens at most 1,048,576 rows per sheet, one of them the header.
XLSX_MAX_ROWS = 1_048_575
# A text cell starting with one of these is read as a formula by Excel (also from a CSV file) or
# LibreOffice: data from the API ("=HYPERLINK(…)" as a nickname) must not run on an operator's PC.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# Phones are stored as E.164 (masked ones with *): "+" then digits is no formula that can call
# anything, and a prefix would spoil the number for whoever reads or re-imports it.
SAFE_PHONE = re.compile(r"\+[0-9*]+")

COLUMNS = [
    "id",
    *PROFILE_COLUMNS,
    "lifecycle_stage",
    "tags",
    "created_at",
]
PHONE_COLUMN = COLUMNS.index("phone")
BIRTHDAY_COLUMN = COLUMNS.index("birthday")
CREATED_COLUMN = COLUMNS.index("created_at")
# How the CSV writes the created time, and how an .xlsx shows its date cells (Excel sorts them).
CREATED_FORMAT = "%Y-%m-%d %H:%M:%S"
XLSX_DATE_FORMAT = "yyyy-mm-dd"
XLSX_DATETIME_FORMAT = "yyyy-mm-dd hh:mm:ss"
# Excel counts days from 1900: an earlier date (a typo such as 0199-05-17) has no date cell.
XLSX_FIRST_DATE = dt.date(1900, 3, 1)


def _headers(custom: list[CustomField]) -> list[str]:
    labels = {
        "id": _("ID"),
        # A person's name (姓名, not 名称): the header the import matches when the file comes back.
        "name": pgettext("person", "Name"),
        "nickname": _("Nickname"),
        "gender": _("Gender"),
        "birthday": _("Birthday"),
        "phone": _("Phone"),
        "email": _("Email"),
        "province": _("Province"),
        "city": _("City"),
        "source": _("Source"),
        "channel_code": _("Channel code"),
        "lifecycle_stage": _("Lifecycle stage"),
        "tags": _("Tags"),
        "created_at": _("Created"),
    }
    return [labels[c] for c in COLUMNS] + [cf.label for cf in custom]


def can_export(user: AbstractBaseUser) -> bool:
    return bool(user.is_authenticated and user.has_perm(EXPORT_PERMISSION))


def export_filters(query: QueryDict) -> dict[str, Any]:
    """The contact-list filters (and segment) of a request, as JSON-safe job parameters.

    Ticked rows (`ids`) stand alone, as in the list's bulk tag: the filter only led to them.
    """
    ids = [v for v in query.getlist("ids") if v != ""]
    if ids:
        # Ids as numbers in the job and its audit entry; anything else is kept as given, for
        # export_queryset to refuse.
        return {"ids": [pk if (pk := parse_id(v)) is not None else v for v in ids]}
    params: dict[str, Any] = {}
    for key in (*FILTER_KEYS, "segment"):
        values = [v for v in query.getlist(key) if v != ""]
        if values:
            params[key] = values if key == "tag" else values[0]
    return params


def list_filter_query(query: QueryDict) -> str:
    """The contact-list filter of a request without its ticked rows, as a query string: the
    way back to the list, or on to the export page with the ticked ids."""
    data = query.copy()
    data.pop("ids", None)
    return urlencode(export_filters(data), doseq=True)


def export_queryset(*, user: AbstractBaseUser, filters: dict[str, Any]) -> QuerySet[Contact]:
    """The contacts an export covers: visible to the user, filtered like the contact list, or
    the ticked ones among those visible."""
    if "ids" in filters:
        ids = [parse_id(v) for v in filters["ids"]]
        if None in ids:
            raise ValidationFailed(_("Some selected contacts are not valid ids."))
        return bulk_target(actor=user, contact_ids=ids)
    data = QueryDict(mutable=True)
    for key, value in filters.items():
        if key == "segment":
            continue
        if isinstance(value, list):
            data.setlist(key, [str(v) for v in value])
        else:
            data[key] = str(value)
    # An invalid filter is refused, not ignored as the list does: it would export everyone.
    qs = contact_filter_checked(data=data, queryset=contact_visible_to(user=user), user=user).qs
    segment = filters.get("segment")
    if segment not in (None, ""):
        segment_id = parse_id(segment)
        if segment_id is None:
            raise ValidationFailed(_("Unknown segment."))
        # Through the reverse relation segments declare on Contact: contacts never imports
        # the segments app (layering), yet can narrow to one segment's materialised members.
        qs = qs.filter(segment_memberships__segment_id=segment_id)
    return qs


def export_start(
    *, user: AbstractBaseUser, filters: dict[str, Any], fmt: str = "csv", ip: str | None = None
) -> Job:
    """Check the user may export, create the job, and run it in the background after commit.

    `ip` is the address the export was asked from (core.audit.request_ip), written to the
    export's audit entry as a download's is.
    """
    from contacts import tasks

    if not can_export(user):
        raise ValidationFailed(
            _("You do not have permission to export contacts."), code="forbidden"
        )
    if fmt not in FORMATS:
        raise ValidationFailed(_("Choose CSV or Excel (.xlsx)."))
    qs = export_queryset(user=user, filters=filters)  # rejects an invalid filter early
    # Counting stops past the limit: no full COUNT(*) over a large table to say "too many".
    if fmt == "xlsx" and qs.order_by()[: XLSX_MAX_ROWS + 1].count() > XLSX_MAX_ROWS:
        raise _too_many_rows()
    job = jobs.job_create(
        kind=JOB_KIND,
        created_by=user,
        params={
            "filters": filters,
            "format": fmt,
            "masked": not can_view_personal_data(user),
            "language": translation.get_language(),
            "ip": ip,
        },
    )
    job_id = job.pk
    transaction.on_commit(lambda: tasks.export_contacts.delay(job_id))
    return job


def _too_many_rows() -> ValidationFailed:
    return ValidationFailed(
        _(
            "Excel cannot open more than %(max)s rows: export these contacts as CSV, or narrow "
            "the filter."
        )
        % {"max": f"{XLSX_MAX_ROWS:,}"},
        code="too_many_rows",
    )


def export_rows(
    *, qs: QuerySet[Contact], masked: bool, custom: list[CustomField]
) -> Iterator[list[Any]]:
    """Yield export rows in id order, one keyset batch at a time.

    Birthday and created time are a date and a naive local datetime (or None): real date cells
    in an .xlsx; the CSV writes them as text (_csv_dates).
    """
    stages = dict(Stage.objects.values_list("key", "name"))
    # In the export's language, like the stage; the import reads these labels back (男/女/未知).
    genders = {value: str(label) for value, label in Gender.choices}
    fields = [c for c in COLUMNS if c not in ("tags", "lifecycle_stage")]
    fields += ["lifecycle_stage_id", "attributes"]
    last = 0
    while True:
        batch = list(qs.filter(pk__gt=last).order_by("pk").values(*fields)[:BATCH])
        if not batch:
            return
        ids = [row["id"] for row in batch]
        tags: dict[int, list[str]] = defaultdict(list)
        for contact_id, name, group in (
            ContactTag.objects.filter(contact_id__in=ids)
            .order_by("tag__name")
            .values_list("contact_id", "tag__name", "tag__group__name")
        ):
            # A name holding a slash would be read back as "group/name" by the import (and by
            # the API): written with its group, it names exactly this tag again.
            tags[contact_id].append(f"{group}/{name}" if "/" in name else name)
        for row in batch:
            phone, email = row["phone"], row["email"]
            if masked:
                phone, email = mask_phone(phone), mask_email(email)
            attributes = row["attributes"] or {}
            yield [
                row["id"],
                row["name"],
                row["nickname"],
                genders.get(row["gender"], row["gender"]),
                row["birthday"],
                phone,
                email,
                row["province"],
                row["city"],
                # The label the list shows (导入, API …), in the export's language; the import
                # reads a label of any language back to its code (labels.source_from_label).
                source_label(row["source"]),
                row["channel_code"],
                stages.get(row["lifecycle_stage_id"], row["lifecycle_stage_id"]),
                "|".join(tags.get(row["id"], [])),
                # Whole seconds, as the CSV always wrote it; Excel takes no time zone.
                timezone.localtime(row["created_at"]).replace(microsecond=0, tzinfo=None),
                *(_cell(attributes.get(cf.key)) for cf in custom),
            ]
        last = ids[-1]


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list):
        return "|".join(str(v) for v in value)
    return value


def _neutralised(row: list[Any]) -> list[Any]:
    """The CSV row with every text that a spreadsheet would run as a formula made plain text.

    OWASP's advice for CSV injection: a leading single quote, which Excel and LibreOffice read
    as "this is text". Numbers are left as numbers. Only for CSV, whose cells have no type.
    """
    return [
        "'" + value
        if isinstance(value, str)
        and value.startswith(FORMULA_START)
        and not (index == PHONE_COLUMN and SAFE_PHONE.fullmatch(value))
        else value
        for index, value in enumerate(row)
    ]


def _csv_dates(row: list[Any]) -> list[Any]:
    """The row with its birthday and created time as the CSV's text: 1990-05-17 and
    2024-03-01 09:30:00."""
    birthday, created = row[BIRTHDAY_COLUMN], row[CREATED_COLUMN]
    row[BIRTHDAY_COLUMN] = birthday.isoformat() if birthday else ""
    row[CREATED_COLUMN] = created.strftime(CREATED_FORMAT)
    return row


def _write_csv(path: Path, headers: list[str], rows: Iterator[list[Any]], job_id: int) -> int:
    count = 0
    with path.open("w", encoding="utf-8-sig", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(_neutralised(headers))
        for row in rows:
            writer.writerow(_neutralised(_csv_dates(row)))
            count += 1
            if count % BATCH == 0:
                jobs.job_progress(job_id=job_id, done=count)
    return count


def _write_xlsx(path: Path, headers: list[str], rows: Iterator[list[Any]], job_id: int) -> int:
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.cell.cell import ERROR_CODES, ILLEGAL_CHARACTERS_RE

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet(_("Contacts"))

    def cells(row: list[Any]) -> list[Any]:
        # openpyxl stores text starting with "=" as a formula and "#N/A" and the like as error
        # values; these few get a cell typed as text (a cell object per value would be slow).
        # Every other text is stored as a string, which Excel never runs, so no cell gets the
        # CSV's leading quote: in a workbook it would be part of the text ("'-_-").
        out = list(row)
        for index, value in enumerate(out):
            if not isinstance(value, str):
                continue
            # Control characters (a vertical tab is Word's line break, pasted into a name) are
            # valid text everywhere else but cannot be stored in a workbook: openpyxl refuses
            # them, which would fail the whole export for one contact.
            if ILLEGAL_CHARACTERS_RE.search(value):
                value = out[index] = ILLEGAL_CHARACTERS_RE.sub("", value)
            if value.startswith("=") or value in ERROR_CODES:
                cell = WriteOnlyCell(sheet, value)
                cell.data_type = "s"
                out[index] = cell
        return out

    def date_cell(value: dt.date, number_format: str) -> WriteOnlyCell:
        cell = WriteOnlyCell(sheet, value)
        cell.number_format = number_format
        return cell

    def dates(row: list[Any]) -> list[Any]:
        # Date cells, which Excel sorts and filters as dates, shown as the CSV writes them
        # (openpyxl's own format drops the hour's leading zero). No birthday: an empty cell.
        birthday = row[BIRTHDAY_COLUMN]
        if birthday is not None:
            row[BIRTHDAY_COLUMN] = (
                date_cell(birthday, XLSX_DATE_FORMAT)
                if birthday >= XLSX_FIRST_DATE
                else birthday.isoformat()
            )
        row[CREATED_COLUMN] = date_cell(row[CREATED_COLUMN], XLSX_DATETIME_FORMAT)
        return row

    sheet.append(cells(headers))
    count = 0
    for row in rows:
        if count == XLSX_MAX_ROWS:  # contacts added since the count: no file Excel cannot open
            raise _too_many_rows()
        sheet.append(dates(cells(row)))
        count += 1
        if count % BATCH == 0:
            jobs.job_progress(job_id=job_id, done=count)
    workbook.save(path)
    return count


def export_run(*, job_id: int) -> dict[str, Any] | None:
    """Write the export file of a queued export job and audit-log it."""
    job = Job.objects.select_related("created_by").filter(pk=job_id, kind=JOB_KIND).first()
    if job is None or job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        return None
    with translation.override(job.params.get("language") or settings.LANGUAGE_CODE):
        return _export_run(job)


def _export_run(job: Job) -> dict[str, Any]:
    user = job.created_by
    fmt = job.params.get("format", "csv")
    filters = job.params.get("filters", {})
    if user is None or not can_export(user):
        jobs.job_fail(job_id=job.pk, error=_("The user may no longer export contacts."))
        return {}
    # The mask decision is taken again at run time: a permission revoked meanwhile applies.
    masked = job.params.get("masked", True) or not can_view_personal_data(user)
    try:
        # The filter is checked again: a tag it names may have been deleted since the start.
        qs = export_queryset(user=user, filters=filters)
        total = qs.count()
        if fmt == "xlsx" and total > XLSX_MAX_ROWS:
            raise _too_many_rows()
    except ValidationFailed as exc:
        jobs.job_fail(job_id=job.pk, error=exc.message)
        return {}
    jobs.job_start(job_id=job.pk, total=total)
    custom = list(CustomField.objects.filter(is_active=True).order_by("position", "key"))
    stamp = timezone.localtime().strftime("%Y%m%d-%H%M%S")
    relative = f"{EXPORT_DIR}/contacts-{job.pk}-{stamp}.{fmt}"
    path = Path(settings.MEDIA_ROOT) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = export_rows(qs=qs, masked=masked, custom=custom)
    writer = _write_xlsx if fmt == "xlsx" else _write_csv
    try:
        count = writer(path, _headers(custom), rows, job.pk)
    except Exception as exc:
        logger.exception("export job %s failed", job.pk)
        path.unlink(missing_ok=True)
        jobs.job_fail(job_id=job.pk, error=str(exc))
        return {}
    result = {"rows": count, "file": relative, "masked": masked, "format": fmt}
    AuditLog.objects.create(
        actor=user,
        action="contacts_export",
        object_type="job",
        object_id=str(job.pk),
        details={"filters": filters, "segment": filters.get("segment"), **result},
        ip=job.params.get("ip") or None,
    )
    jobs.job_progress(job_id=job.pk, done=count, total=count)
    jobs.job_finish(job_id=job.pk, result=result, output_file=relative)
    return result

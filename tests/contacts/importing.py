"""What the contact import tests share: a file from rows, a run through the real job, the
rejected-rows file read back. Their fixtures (`media`, `english`) are in conftest.py."""

import csv
import io

import pandas as pd
from django.core.files.uploadedfile import SimpleUploadedFile

from contacts import importers
from contacts.importers import ImportSpec
from contacts.models import Contact, IdentityKind
from core.models import Job, JobStatus
from tests.factories import ContactFactory, IdentityFactory


def csv_bytes(rows: list[dict]) -> bytes:
    return pd.DataFrame(rows).to_csv(index=False).encode()


def upload(rows: list[dict], *, user=None, filename: str = "客户.csv") -> Job:
    return importers.import_upload(file=SimpleUploadedFile(filename, csv_bytes(rows)), user=user)


def run(
    rows: list[dict],
    capture,
    *,
    key: str = "external_id",
    user=None,
    tag_ids=(),
    filename: str = "客户.csv",
) -> Job:
    """Upload `rows` as a CSV and run the import job to its end (on-commit tasks executed)."""
    return finish(upload(rows, user=user, filename=filename), capture, key=key, tag_ids=tag_ids)


def finish(job: Job, capture, *, key: str = "external_id", tag_ids=()) -> Job:
    """Start an uploaded import with its guessed mapping and run it to a successful end."""
    spec = ImportSpec(mapping=job.params["mapping"], key=key, tag_ids=list(tag_ids))
    with capture(execute=True):
        importers.import_start(job=job, spec=spec)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    return job


def existing(phone: str, **fields) -> Contact:
    """A contact already in the pool with `phone` and its phone identity."""
    contact = ContactFactory(phone=phone, **fields)
    IdentityFactory(contact=contact, kind=IdentityKind.PHONE, value=phone)
    return contact


def reasons(job: Job, media) -> dict[str, str]:
    """The rejected-rows file as {file row number: reason}."""
    if not job.result["rejected_file"]:
        return {}
    text = (media / job.result["rejected_file"]).read_bytes().decode("utf-8-sig")
    return {row[0]: row[-1] for row in list(csv.reader(io.StringIO(text)))[1:]}


def counts(job: Job) -> tuple[int, int, int, int]:
    r = job.result
    return r["created"], r["updated"], r["unchanged"], r["rejected"]

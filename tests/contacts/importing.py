"""What the contact import tests share: a file from rows, a run through the real job, the
rejected-rows file read back. Their fixtures (`media`, `english`) are in conftest.py."""

import csv
import io

import pandas as pd
from django.core.files.uploadedfile import SimpleUploadedFile

from contacts import importers
from contacts.importers import ImportSpec
from core.models import Job, JobStatus


def csv_bytes(rows: list[dict]) -> bytes:
    return pd.DataFrame(rows).to_csv(index=False).encode()


def upload(rows: list[dict]) -> Job:
    return importers.import_upload(file=SimpleUploadedFile("客户.csv", csv_bytes(rows)), user=None)


def run(rows: list[dict], capture, *, key: str = "external_id") -> Job:
    """Upload `rows` as a CSV and run the import job to its end (on-commit tasks executed)."""
    job = upload(rows)
    spec = ImportSpec(mapping=job.params["mapping"], key=key)
    with capture(execute=True):
        importers.import_start(job=job, spec=spec)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    return job


def reasons(job: Job, media) -> dict[str, str]:
    """The rejected-rows file as {file row number: reason}."""
    if not job.result["rejected_file"]:
        return {}
    text = (media / job.result["rejected_file"]).read_bytes().decode("utf-8-sig")
    return {row[0]: row[-1] for row in list(csv.reader(io.StringIO(text)))[1:]}


def counts(job: Job) -> tuple[int, int, int, int]:
    r = job.result
    return r["created"], r["updated"], r["unchanged"], r["rejected"]

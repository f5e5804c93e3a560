"""Adding the contacts of an uploaded list to a static list runs as a background job: the upload
is checked at once, the worker matches the rows, the page follows its progress and offers every
row that matched nobody as a CSV download."""

import csv
import io
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils.html import escape
from openpyxl import Workbook

from contacts.models import IdentityKind
from contacts.roles import ANALYST, OPERATOR, roles_sync
from core.models import Job, JobStatus
from core.uploads import media_path
from segments import static_import
from segments.models import Segment, SegmentKind
from segments.services import segment_create
from segments.static_import import STATIC_IMPORT_JOB_KIND, segment_static_import_job_run
from tests.factories import ContactFactory, IdentityFactory, user_with_role

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}
BOM = b"\xef\xbb\xbf"
OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
LIST = "手机号\n13800138000\n13900000000\nnot-a-phone\n\n=1+2\n13800138000\n"


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def static():
    return segment_create(name="活动名单", kind=SegmentKind.STATIC)


@pytest.fixture
def known():
    contact = ContactFactory()
    IdentityFactory(contact=contact, kind=IdentityKind.PHONE, value="+8613800138000")
    return contact


def members(segment: Segment) -> set[int]:
    return set(segment.memberships.values_list("contact_id", flat=True))


def upload(name: str = "list.csv", content: bytes | str = LIST) -> SimpleUploadedFile:
    data = content.encode() if isinstance(content, str) else content
    return SimpleUploadedFile(name, data)


def start(client, segment, file, *, run=True, capture=None, match_by="phone", **extra):
    url = reverse("segments:static_import", args=[segment.pk])
    data = {"file": file, "match_by": match_by}
    if capture is None:
        return client.post(url, data, **extra)
    with capture(execute=run):
        return client.post(url, data, **extra)


def rows_of(response) -> list[list[str]]:
    body = b"".join(response.streaming_content)
    assert body.startswith(BOM)  # Excel reads the file as UTF-8 only with it
    return list(csv.reader(io.StringIO(body[len(BOM) :].decode())))


def xlsx(values: list) -> bytes:
    workbook = Workbook()
    for value in values:
        workbook.active.append([value])
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


# --- the whole way through ---------------------------------------------------------------------


def test_an_upload_runs_as_a_job_and_offers_the_unmatched_rows(
    operator_client, static, known, django_capture_on_commit_callbacks
):
    response = start(operator_client, static, upload(), capture=django_capture_on_commit_callbacks)

    job = Job.objects.get(kind=STATIC_IMPORT_JOB_KIND)
    page_url = f"{reverse('segments:static_import', args=[static.pk])}?job={job.pk}"
    assert response.status_code == 302 and response["Location"] == page_url
    assert job.status == JobStatus.SUCCEEDED  # ran in the worker (inline here)
    assert members(static) == {known.pk}
    assert job.result["rows"] == 6  # the title row is not one
    assert (job.result["matched"], job.result["added"], job.result["unmatched"]) == (1, 1, 4)
    assert job.result["duplicates"] == 1  # row 7 repeats row 2's phone
    assert job.done == job.total == 6
    assert job.params["segment_id"] == static.pk and job.params["filename"] == "list.csv"

    page = operator_client.get(page_url).content.decode()
    assert 'id="job-progress"' in page and "every 1s" not in page
    # The first unmatched rows inline, with row numbers as in the file (the title is row 1).
    assert ">3<" in page and "13900000000" in page and "not-a-phone" in page
    assert "+8613900000000" not in page  # the value as written, not as it was matched
    download_url = reverse("segments:static_import_unmatched", args=[static.pk, job.pk])
    assert download_url in page

    download = operator_client.get(download_url)
    assert download.status_code == 200
    assert download["Content-Type"] == "text/csv; charset=utf-8"
    assert "attachment" in download["Content-Disposition"]
    header, *rows = rows_of(download)
    assert header == ["行号", "值", "原因"]
    assert [row[:2] for row in rows] == [
        ["3", "13900000000"],
        ["4", "not-a-phone"],
        ["5", ""],
        # A value a spreadsheet would run as a formula is written as text.
        ["6", "'=1+2"],
    ]
    reasons = [row[2] for row in rows]
    assert reasons[0] == "没有客户匹配此值" and reasons[2] == "空值"
    assert all(reasons)


def test_the_htmx_upload_swaps_in_the_progress_and_the_poll_ends_with_the_result(
    operator_client, static, known, django_capture_on_commit_callbacks
):
    response = start(
        operator_client,
        static,
        upload(),
        run=False,
        capture=django_capture_on_commit_callbacks,
        **HX,
    )

    html = response.content.decode()
    job = Job.objects.get(kind=STATIC_IMPORT_JOB_KIND)
    assert html.lstrip().startswith('<div id="static-import"')
    assert response["HX-Push-Url"].endswith(f"?job={job.pk}")
    # Queued: the block polls the page for itself.
    poll_url = re.search(r'hx-get="([^"]+)"', html).group(1).replace("&amp;", "&")
    queued = operator_client.get(poll_url, **HX).content.decode()
    assert queued.lstrip().startswith('<section id="job-progress"') and "every 1s" in queued
    assert 'id="static-import-counts"' in queued and 'hx-swap-oob="true"' in queued

    segment_static_import_job_run(job_id=job.pk)

    done = operator_client.get(poll_url, **HX).content.decode()
    assert "every 1s" not in done and "13900000000" in done
    assert members(static) == {known.pk}


def test_the_counts_so_far_show_while_the_job_runs(operator, operator_client, static):
    job = Job.objects.create(
        kind=STATIC_IMPORT_JOB_KIND,
        status=JobStatus.RUNNING,
        created_by=operator,
        params={"segment_id": static.pk},
        total=1000,
        done=400,
        result={"rows": 399, "matched": 321, "unmatched": 78},
    )
    url = f"{reverse('segments:static_import', args=[static.pk])}?job={job.pk}"

    html = operator_client.get(url, **HX).content.decode()

    assert "every 1s" in html and "321" in html and "78" in html


def test_an_excel_list_with_numbers_as_numbers(
    operator_client, static, known, django_capture_on_commit_callbacks
):
    content = xlsx(["phone", 13800138000, None, "13900000000"])

    start(
        operator_client,
        static,
        upload("名单.xlsx", content),
        capture=django_capture_on_commit_callbacks,
    )

    job = Job.objects.get()
    assert job.status == JobStatus.SUCCEEDED
    assert members(static) == {known.pk}
    assert job.result["unmatched_first"] == [
        [3, "", "空值"],
        [4, "13900000000", "没有客户匹配此值"],
    ]


def test_every_row_counts_once_and_the_progress_counts_the_rows_the_result_counts(
    operator_client, static, known, django_capture_on_commit_callbacks
):
    other = ContactFactory()
    IdentityFactory(contact=other, kind=IdentityKind.PHONE, value="+8613700137000")
    content = "手机号\n13800138000\n13700137000\n13800138000\n13800000000\nnot-a-phone\n\n"

    start(
        operator_client,
        static,
        upload(content=content),
        run=False,
        capture=django_capture_on_commit_callbacks,
    )
    job = Job.objects.get()
    assert job.total == 6  # what the bar counts to: the rows, not the title row

    segment_static_import_job_run(job_id=job.pk)

    job.refresh_from_db()
    result = job.result
    assert job.done == job.total == result["rows"] == 6
    assert (result["matched"], result["duplicates"], result["unmatched"]) == (2, 1, 3)
    assert result["rows"] == result["matched"] + result["duplicates"] + result["unmatched"]
    assert members(static) == {known.pk, other.pk}
    page = operator_client.get(
        f"{reverse('segments:static_import', args=[static.pk])}?job={job.pk}"
    ).content.decode()
    assert "重复行" in page
    _header, *rows = rows_of(
        operator_client.get(reverse("segments:static_import_unmatched", args=[static.pk, job.pk]))
    )
    assert [row[:2] for row in rows] == [["5", "13800000000"], ["6", "not-a-phone"], ["7", ""]]


def test_the_counts_so_far_include_the_repeated_rows(settings, operator, operator_client, static):
    job = Job.objects.create(
        kind=STATIC_IMPORT_JOB_KIND,
        status=JobStatus.RUNNING,
        created_by=operator,
        params={"segment_id": static.pk},
        total=1000,
        done=400,
        result={"rows": 400, "matched": 300, "duplicates": 22, "unmatched": 78},
    )
    url = f"{reverse('segments:static_import', args=[static.pk])}?job={job.pk}"
    operator_client.cookies[settings.LANGUAGE_COOKIE_NAME] = "en"

    html = operator_client.get(url, **HX).content.decode()

    assert "So far: contacts found 300, repeated rows 22, rows that matched nobody 78." in html


def test_values_excel_would_turn_into_numbers_are_kept_as_text_in_the_download(
    operator_client, static, django_capture_on_commit_callbacks
):
    content = "\n".join(["id", "00123", "123456789012345678", "13800000000", "A-7"]) + "\n"

    start(
        operator_client,
        static,
        upload(content=content),
        match_by="external_id",
        capture=django_capture_on_commit_callbacks,
    )

    job = Job.objects.get()
    _header, *rows = rows_of(
        operator_client.get(reverse("segments:static_import_unmatched", args=[static.pk, job.pk]))
    )
    # A leading tab keeps Excel from dropping the zero or rounding the digits; eleven digits it
    # shows as written, and text it leaves alone.
    assert [row[1] for row in rows] == ["\t00123", "\t123456789012345678", "13800000000", "A-7"]
    assert [row[1] for row in job.result["unmatched_first"]] == [
        "00123",
        "123456789012345678",
        "13800000000",
        "A-7",
    ]


def test_the_download_uploaded_again_reads_the_same_values(
    operator_client, static, django_capture_on_commit_callbacks
):
    content = "手机号\n+8613900000000\n013900000000\n"
    start(
        operator_client, static, upload(content=content), capture=django_capture_on_commit_callbacks
    )
    first = Job.objects.get()
    body = b"".join(
        operator_client.get(
            reverse("segments:static_import_unmatched", args=[static.pk, first.pk])
        ).streaming_content
    )
    values = [row[1] for row in csv.reader(io.StringIO(body[len(BOM) :].decode()))][1:]
    contact = ContactFactory()
    IdentityFactory(contact=contact, kind=IdentityKind.PHONE, value="+8613900000000")

    start(
        operator_client,
        static,
        upload(content="\n".join(values) + "\n"),
        capture=django_capture_on_commit_callbacks,
    )

    again = Job.objects.order_by("-pk").first()
    assert again.result["unmatched"] == 0 and members(static) == {contact.pk}


def test_a_gbk_list_is_read(operator_client, static, known, django_capture_on_commit_callbacks):
    start(
        operator_client,
        static,
        upload(content="手机号\n13800138000\n".encode("gbk")),
        capture=django_capture_on_commit_callbacks,
    )
    assert Job.objects.get().result["added"] == 1 and members(static) == {known.pk}


def test_every_unmatched_row_is_in_the_download_and_the_page_shows_the_first(
    operator_client, static, django_capture_on_commit_callbacks
):
    shown = static_import.UNMATCHED_SHOWN
    content = "\n".join(f"1390000{i:04d}" for i in range(shown + 20)) + "\n"

    start(
        operator_client,
        static,
        upload(content=content),
        capture=django_capture_on_commit_callbacks,
    )

    job = Job.objects.get()
    assert job.result["unmatched"] == shown + 20 and len(job.result["unmatched_first"]) == shown
    page = operator_client.get(
        f"{reverse('segments:static_import', args=[static.pk])}?job={job.pk}"
    ).content.decode()
    assert page.count('<td class="num">') == shown
    download = operator_client.get(
        reverse("segments:static_import_unmatched", args=[static.pk, job.pk])
    )
    _header, *rows = rows_of(download)
    assert [int(row[0]) for row in rows] == list(range(1, shown + 21))


def test_importing_the_same_file_again_adds_nobody_twice(
    operator_client, static, known, django_capture_on_commit_callbacks
):
    start(operator_client, static, upload(), capture=django_capture_on_commit_callbacks)
    start(operator_client, static, upload(), capture=django_capture_on_commit_callbacks)

    first, second = Job.objects.filter(kind=STATIC_IMPORT_JOB_KIND).order_by("pk")
    assert first.result["added"] == 1
    assert second.status == JobStatus.SUCCEEDED
    assert (second.result["matched"], second.result["added"]) == (1, 0)
    assert members(static) == {known.pk}
    static.refresh_from_db()
    assert static.member_count == 1


def test_a_redelivered_message_changes_nothing(
    operator_client, static, known, django_capture_on_commit_callbacks
):
    start(operator_client, static, upload(), capture=django_capture_on_commit_callbacks)
    job = Job.objects.get()
    finished = (job.finished_at, job.result)

    segment_static_import_job_run(job_id=job.pk)  # a finished job is left alone

    job.refresh_from_db()
    assert (job.finished_at, job.result) == finished


def test_a_job_that_stopped_half_way_runs_again_and_adds_nobody_twice(
    operator_client, static, known, django_capture_on_commit_callbacks
):
    start(operator_client, static, upload(), run=False, capture=django_capture_on_commit_callbacks)
    job = Job.objects.get()
    # A worker that died mid-way (after adding, before finishing): the broker delivers again.
    Job.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, done=3)
    static_import.segment_static_import(
        segment=static, file=media_path(job.input_file), match_by="phone"
    )

    segment_static_import_job_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert (job.result["matched"], job.result["added"], job.result["unmatched"]) == (1, 0, 4)
    assert members(static) == {known.pk}


# --- bad files -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("list.csv", b"13800138000\n\xff\xfe\xff\xff\n", "GBK/GB18030"),
        ("list.csv", b"\x00\x01\x02binary", "二进制"),
        ("list.xlsx", OLE2 + b"\x00" * 600, "密码"),
        ("list.xls", b"anything", ".xls"),
        ("list.xlsx", b"plain text, not a workbook", ".xlsx"),
        ("list.xlsx", b"PK\x03\x04garbage", ".xlsx"),
        ("list.pdf", b"%PDF-1.4", ".csv"),
    ],
    ids=["encoding", "binary", "password", "xls", "not-zip", "broken-zip", "extension"],
)
def test_a_bad_file_is_refused_at_upload_with_its_reason(
    settings, operator_client, static, name, content, message
):
    response = start(operator_client, static, upload(name, content), **HX)

    assert response.status_code == 422
    html = response.content.decode()
    assert 'class="alert alert-error"' in html and message in html
    assert not Job.objects.exists()
    imports = settings.MEDIA_ROOT / "imports"
    assert not imports.exists() or not any(imports.iterdir())  # the upload is not kept


def test_a_file_with_too_many_rows_is_refused_at_upload(monkeypatch, operator_client, static):
    monkeypatch.setattr(static_import, "STATIC_IMPORT_MAX_ROWS", 3)

    response = start(operator_client, static, upload(content="1\n2\n3\n4\n"))

    assert response.status_code == 422
    assert "3" in response.content.decode()
    assert not Job.objects.exists()


def test_a_file_that_fails_in_the_worker_shows_its_error_and_adds_nobody(
    monkeypatch, operator_client, static, known, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        start(operator_client, static, upload())
    # Found to be too long only while read (a workbook need not say how many rows it has).
    monkeypatch.setattr(static_import, "STATIC_IMPORT_MAX_ROWS", 4)
    for callback in callbacks:
        callback()

    job = Job.objects.get()
    assert job.status == JobStatus.FAILED
    assert "4" in job.error and not job.output_file
    assert not members(static)
    html = operator_client.get(
        f"{reverse('segments:static_import', args=[static.pk])}?job={job.pk}", **HX
    ).content.decode()
    assert "every 1s" not in html and 'class="alert alert-error"' in html
    assert escape(job.error) in html
    assert not list((media_path("imports")).glob("*unmatched*"))


def test_a_list_archived_before_its_import_ran_fails_the_job(
    operator_client, static, known, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        start(operator_client, static, upload())
    Segment.objects.filter(pk=static.pk).update(is_archived=True)
    for callback in callbacks:
        callback()

    job = Job.objects.get()
    assert job.status == JobStatus.FAILED and job.error
    assert not members(static)


def test_a_rule_based_segment_takes_no_file(operator_client):
    segment = segment_create(name="全部", rule={"op": "and", "conditions": []})
    response = start(operator_client, segment, upload())
    assert response.status_code == 422
    assert not Job.objects.exists()


# --- who may ------------------------------------------------------------------------------------


@pytest.fixture
def finished_job(operator_client, static, known, django_capture_on_commit_callbacks):
    start(operator_client, static, upload(), capture=django_capture_on_commit_callbacks)
    return Job.objects.get()


def job_urls(segment: Segment, job: Job) -> list[str]:
    return [
        f"{reverse('segments:static_import', args=[segment.pk])}?job={job.pk}",
        reverse("segments:static_import_unmatched", args=[segment.pk, job.pk]),
    ]


def test_a_reader_may_neither_start_nor_follow_nor_download(client, static, finished_job):
    roles_sync()
    client.force_login(user_with_role(ANALYST))

    assert start(client, static, upload()).status_code == 403
    for url in job_urls(static, finished_job):
        assert client.get(url).status_code == 403, url
    assert Job.objects.count() == 1


def test_another_editor_sees_neither_the_job_nor_its_rows(client, static, finished_job):
    roles_sync()
    client.force_login(user_with_role(OPERATOR))

    for url in job_urls(static, finished_job):
        assert client.get(url).status_code == 404, url
    # …but may import a list of their own.
    assert start(client, static, upload()).status_code == 302


def test_a_job_is_only_reached_through_its_own_list(operator_client, finished_job):
    other = segment_create(name="另一个名单", kind=SegmentKind.STATIC)
    for url in job_urls(other, finished_job):
        assert operator_client.get(url).status_code == 404, url


def test_anonymous_users_are_sent_to_login(client, static, finished_job):
    client.logout()
    for url in job_urls(static, finished_job):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_there_is_nothing_to_download_when_every_row_matched(
    operator_client, static, known, django_capture_on_commit_callbacks
):
    start(
        operator_client,
        static,
        upload(content="13800138000\n"),
        capture=django_capture_on_commit_callbacks,
    )
    job = Job.objects.get()
    assert job.status == JobStatus.SUCCEEDED and job.result["unmatched"] == 0
    assert not job.output_file
    url = reverse("segments:static_import_unmatched", args=[static.pk, job.pk])
    assert operator_client.get(url).status_code == 404

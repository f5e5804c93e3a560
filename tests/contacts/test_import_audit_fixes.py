"""What an operator audit of the contact import found, fixed: a CSV row with more cells than the
header no longer makes the whole file unreadable, common Chinese header spellings are guessed,
a column without a header is named by its position, the problem texts are sentences, and one
job is never run twice at once."""

import csv
import io
import threading

import openpyxl
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connections
from django.urls import reverse

from contacts import importers
from contacts.importers import ImportSpec
from contacts.models import Contact, CustomField
from core.models import Job, JobStatus
from tests.contacts.importing import counts, reasons, upload

pytestmark = pytest.mark.django_db


def _upload(content: bytes, name: str = "客户.csv") -> Job:
    return importers.import_upload(file=SimpleUploadedFile(name, content), user=None)


def _run(job: Job, capture, *, key: str = "phone") -> Job:
    spec = ImportSpec(mapping=job.params["mapping"], key=key)
    with capture(execute=True):
        importers.import_start(job=job, spec=spec)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    return job


def _rejected(job: Job, media) -> list[list[str]]:
    text = (media / job.result["rejected_file"]).read_bytes().decode("utf-8-sig")
    return list(csv.reader(io.StringIO(text)))


def _names_by_phone() -> dict[str, str]:
    return dict(Contact.objects.values_list("phone", "name"))


# --- 1. A row with more cells than the header costs that row, not the file -------------------

WIDE = "姓名,手机号\n张甲,13811112222\n李乙,13811113333,北京\n王丙,13811114444\n".encode()


def test_a_row_with_more_cells_than_the_header_is_rejected_and_the_others_import(
    media, english, django_capture_on_commit_callbacks
):
    job = _run(_upload(WIDE), django_capture_on_commit_callbacks)

    assert counts(job) == (2, 0, 0, 1)
    assert _names_by_phone() == {"+8613811112222": "张甲", "+8613811114444": "王丙"}
    header, row = _rejected(job, media)
    assert header == ["Row", "姓名", "手机号", "Reason"]
    assert row == [
        "3",
        "李乙",
        "13811113333",
        "This row has 3 cells but the header has 2 columns (extra: “北京”). Put a value that "
        "contains the separator in double quotes.",
    ]


def test_the_upload_form_takes_a_file_with_a_wide_row_and_the_preview_names_it(
    admin_client, media, english
):
    response = admin_client.post(
        reverse("contacts_io:import"), {"file": SimpleUploadedFile("客户.csv", WIDE)}
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    job = Job.objects.get()
    page = admin_client.get(response["Location"]).content.decode()
    preview = page[page.index('id="import-preview"') :]
    assert "This row has 3 cells but the header has 2 columns (extra: “北京”)" in preview
    assert "+8613811114444" in preview  # the row after it is read as usual
    assert job.params["headers"] == ["姓名", "手机号"]


def test_a_trailing_separator_reads_the_row_as_it_is(media, django_capture_on_commit_callbacks):
    # The audit's file: one row ends with a comma its header does not have.
    content = "姓名,手机号\n张甲,13811112222\n李乙,13811113333,\n王丙,13811114444\n".encode()

    job = _run(_upload(content), django_capture_on_commit_callbacks)

    assert counts(job) == (3, 0, 0, 0)
    assert _names_by_phone()["+8613811113333"] == "李乙"


@pytest.mark.parametrize(
    ("first", "rejected"),
    [
        ("张甲,13811112222,", {}),
        (
            "张甲,13811112222,,附注",
            {
                "2": "This row has 4 cells but the header has 2 columns (extra: “”, “附注”). Put "
                "a value that contains the separator in double quotes."
            },
        ),
    ],
    ids=["trailing separator", "filled extra cell"],
)
def test_a_wide_first_row_never_shifts_the_columns(
    media, english, django_capture_on_commit_callbacks, first, rejected
):
    # pandas reads a first data row wider than the header by taking its first cell as the
    # row's label: every column moved one to the left (names in the phone column).
    content = f"姓名,手机号\n{first}\n李乙,13811113333\n".encode()

    job = _run(_upload(content), django_capture_on_commit_callbacks)

    names = _names_by_phone()
    assert names["+8613811113333"] == "李乙"
    assert ("+8613811112222" in names) is not bool(rejected)
    assert reasons(job, media) == rejected


def test_wide_rows_are_found_in_any_chunk_and_keep_their_row_numbers(
    media, english, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(importers, "CHUNK_ROWS", 2)
    lines = ["手机号,姓名,城市"]
    lines += [f"1381111{i:04d},客户{i},上海" for i in range(7)]
    lines[3] += ",,"  # empty cells past the header: read as usual
    lines[5] += ",浦东,新区"  # row 6 of the file: five cells, in the third chunk
    lines[7] += ",,x"
    content = ("\n".join(lines) + "\n").encode()

    job = _run(_upload(content), django_capture_on_commit_callbacks)

    assert counts(job) == (5, 0, 0, 2)
    assert reasons(job, media) == {
        "6": "This row has 5 cells but the header has 3 columns (extra: “浦东”, “新区”). Put a "
        "value that contains the separator in double quotes.",
        "8": "This row has 5 cells but the header has 3 columns (extra: “”, “x”). Put a "
        "value that contains the separator in double quotes.",
    }
    assert Contact.objects.get(phone="+8613811110002").city == "上海"
    assert Contact.objects.get(phone="+8613811110005").name == "客户5"


def test_a_row_far_wider_than_the_header_is_refused_without_holding_all_its_cells(media, english):
    content = ("手机号,姓名\n13811110000,林\n13811110001,王" + ",x" * 500 + "\n").encode()
    job = _upload(content)
    source = importers.SourceFile.from_params(job.params)

    (frame,) = list(source.chunks())

    assert list(frame.columns) == ["手机号", "姓名", importers.EXTRA_CELLS]
    assert frame[importers.EXTRA_CELLS].tolist()[0] == ""
    assert len(frame[importers.EXTRA_CELLS].tolist()[1]) < 1000  # cut past MAX_EXTRA_CELLS
    spec = ImportSpec(mapping=job.params["mapping"], key="phone")
    good, bad = importers.prepare_chunk(frame, spec=spec, state=importers.ChunkState.load())
    assert good["name"].tolist() == ["林"]
    assert bad["_reason"].str.startswith("This row has ").tolist() == [True]


def test_a_quotation_mark_never_closed_is_refused_in_the_operators_words(
    admin_client, media, english
):
    content = '姓名,手机号\n张甲,13811112222\n"李乙,13811113333\n王丙,13811114444\n'.encode()

    response = admin_client.post(
        reverse("contacts_io:import"), {"file": SimpleUploadedFile("客户.csv", content)}
    )

    assert response.status_code == 400
    page = response.content.decode().replace("&quot;", '"')
    assert 'A quotation mark (") opened in row 3 of the file is never closed' in page
    assert "tokenizing" not in page and "C error" not in page and "EOF" not in page
    assert not Job.objects.exists()


def test_an_unreadable_csv_never_shows_the_parsers_message(media, english):
    job = upload([{"手机号": "13800138000"}])
    source = importers.SourceFile.from_params(job.params)

    error = importers.unreadable_file(
        source, ValueError("Error tokenizing data. C error: Buffer overflow caught")
    )

    assert error.message == (
        "The file cannot be read as CSV. Open it in Excel, save it again as “CSV UTF-8” and "
        "upload it again."
    )


# --- 3. Header spellings operators use -----------------------------------------------------


def test_the_audits_headers_are_all_guessed():
    headers = ["客户姓名", "手机号（必填）", "电子邮件", "所在城市", "客户标签", "出生年月"]
    headers += ["用户昵称", "会员编号"]

    assert importers.guess_mapping(headers=headers) == {
        "客户姓名": "name",
        "手机号（必填）": "phone",
        "电子邮件": "email",
        "所在城市": "city",
        "客户标签": "tags",
        "出生年月": "birthday",
        "用户昵称": "nickname",
        "会员编号": "external_id",
    }


@pytest.mark.parametrize(
    ("header", "target"),
    [
        ("手机号码", "phone"),
        ("联系电话", "phone"),
        ("电话号码", "phone"),
        ("移动电话", "phone"),
        ("客户手机号", "phone"),
        ("【必填】手机号", "phone"),
        ("Phone (required)", "phone"),
        ("Mobile Phone", "phone"),
        ("*手机号*", "phone"),
        ("电子邮箱", "email"),
        ("邮件地址", "email"),
        ("E-mail", "email"),
        ("Email Address", "email"),
        ("城市名称", "city"),
        ("所在省份", "province"),
        ("标签名称", "tags"),
        ("标签（多个用逗号分隔）", "tags"),
        ("出生日期", "birthday"),
        ("生日日期", "birthday"),
        ("生日[yyyy-mm-dd]", "birthday"),
        ("会员生日", "birthday"),
        ("微信昵称", "nickname"),
        ("会员卡号", "external_id"),
        ("客户编号", "external_id"),
        ("Union_ID", "unionid"),
        ("性别（男/女）", "gender"),
        ("客户来源", "source"),
        # A phone or an email? Left to the operator.
        ("联系方式", ""),
        ("会员等级", ""),
    ],
)
def test_common_header_spellings_are_guessed(header, target):
    assert importers.guess_mapping(headers=[header]) == {header: target}


def test_a_custom_field_named_like_a_prefixed_header_keeps_its_column():
    CustomField.objects.create(key="customer_tags", label="客户标签", kind="text")

    assert importers.guess_mapping(headers=["客户标签", "手机号"]) == {
        "客户标签": "cf:customer_tags",
        "手机号": "phone",
    }


NO_IDENTITY = (
    "No column is mapped to Phone, Email, External id or WeChat unionid: without one, no "
    "contact can be matched or created. Choose which column of the file holds one."
)


def test_the_mapping_page_says_at_once_that_no_column_can_match_a_contact(
    admin_client, media, english
):
    job = upload([{"姓名": "张三", "备注": "老客户"}])
    url = reverse("contacts_io:import_mapping", args=[job.pk])

    page = admin_client.get(url).content.decode().replace("&#x27;", "'")

    assert page.count(NO_IDENTITY) == 2  # at the top of the page, and where the preview would be
    toast = page[page.index('class="toast toast-warning"') :]
    assert toast[: toast.index("</div>")].count(NO_IDENTITY) == 1
    response = admin_client.post(
        url, {"col_0": "name", "col_1": "", "key": "phone", "action": "start"}
    )
    assert NO_IDENTITY in response.content.decode()
    job.refresh_from_db()
    assert not job.params.get("started")


def test_a_mapping_page_with_a_phone_column_says_nothing_of_it(admin_client, media, english):
    job = upload([{"姓名": "张三", "手机号（必填）": "13800138000"}])

    page = admin_client.get(reverse("contacts_io:import_mapping", args=[job.pk])).content.decode()

    assert "No column is mapped" not in page
    assert "+8613800138000" in page


# --- 4. A column without a header ------------------------------------------------------------


def test_a_csv_column_without_a_header_is_named_by_its_position(admin_client, media, english):
    job = _upload("姓名,手机号,\n张甲,13811112222,备注\n".encode())

    page = admin_client.get(reverse("contacts_io:import_mapping", args=[job.pk])).content.decode()

    assert "(column 3, no header)" in page
    assert "Unnamed" not in page


def test_a_workbook_column_without_a_header_is_named_by_its_position(admin_client, media, english):
    workbook = openpyxl.Workbook()
    workbook.active.append(["姓名", None, "手机号"])
    workbook.active.append(["张甲", "备注", "13811112222"])
    buffer = io.BytesIO()
    workbook.save(buffer)
    job = _upload(buffer.getvalue(), name="客户.xlsx")

    page = admin_client.get(reverse("contacts_io:import_mapping", args=[job.pk])).content.decode()

    assert "(column 2, no header)" in page
    assert "column_2" not in page


def test_the_rejected_rows_file_leaves_a_missing_header_empty(
    media, english, django_capture_on_commit_callbacks
):
    job = _run(
        _upload("姓名,手机号,\n张甲,13811112222,\n坏,12345,备注\n".encode()),
        django_capture_on_commit_callbacks,
    )

    header, row = _rejected(job, media)
    assert header == ["Row", "姓名", "手机号", "", "Reason"]
    assert row == ["3", "坏", "12345", "备注", "Invalid phone number."]


def test_a_column_without_a_header_is_named_in_chinese_too(admin_client, media):
    job = _upload("姓名,手机号,\n张甲,13811112222,备注\n".encode())

    page = admin_client.get(reverse("contacts_io:import_mapping", args=[job.pk])).content.decode()

    assert "（第 3 列，无表头）" in page
    assert "Unnamed" not in page


# --- 7. Problem texts are sentences ---------------------------------------------------------


def test_every_problem_is_a_sentence_and_a_row_reads_as_one(
    media, english, django_capture_on_commit_callbacks
):
    CustomField.objects.create(key="vip", label="是否会员", kind="boolean")
    rows = [
        {
            "手机号": "13800138000",
            "邮箱": "a@example.com",
            "性别": "女",
            "生日": "",
            "是否会员": "是",
        },
        {"手机号": "12345", "邮箱": "bad", "性别": "?", "生日": "2999-01-01", "是否会员": "也许"},
        {"手机号": "13800138000", "邮箱": "", "性别": "", "生日": "", "是否会员": ""},
        {"手机号": "13900139000", "邮箱": "", "性别": "", "生日": "", "是否会员": "否"},
    ]
    job = _run(upload(rows), django_capture_on_commit_callbacks)

    assert reasons(job, media) == {
        "3": "Invalid phone number; Invalid email; Gender must be 男/女 or male/female; "
        "Birthday is in the future; Custom field '是否会员' must be yes or no (是/否, yes/no, "
        "true/false or 1/0).",
        "4": "Duplicate of an earlier row in this file (same key).",
    }
    assert Contact.objects.get(phone="+8613900139000").attributes == {"vip": False}


def test_join_reasons_keeps_only_the_last_full_stop():
    assert importers.join_reasons(["Invalid email.", "邮箱无效。", "Unknown lifecycle stage."]) == (
        "Invalid email; 邮箱无效; Unknown lifecycle stage."
    )
    assert importers.join_reasons([]) == ""


# --- 8. One run of a job at a time -----------------------------------------------------------


def _started(rows: int, capture) -> Job:
    job = upload([{"手机": f"1380013{i:04d}", "姓名": f"客户{i}"} for i in range(rows)])
    with capture(execute=False):  # started, its task not run
        importers.import_start(job=job, spec=ImportSpec(mapping=job.params["mapping"]))
    return job


class OtherWorker:
    """A worker running the job elsewhere: it holds the job's claim until it stops (or dies)."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self.holding = threading.Event()
        self.stop = threading.Event()
        self.claimed: bool | None = None
        self.thread = threading.Thread(target=self._work)

    def _work(self) -> None:
        try:
            with importers._run_claim(self.job_id) as claimed:
                self.claimed = claimed
                self.holding.set()
                self.stop.wait(30)
        finally:
            connections.close_all()

    def __enter__(self) -> "OtherWorker":
        self.thread.start()
        assert self.holding.wait(30) and self.claimed
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def test_a_redelivered_run_while_a_worker_runs_the_job_changes_nothing(
    media, django_capture_on_commit_callbacks
):
    job = _started(3, django_capture_on_commit_callbacks)

    with OtherWorker(job.pk):
        assert importers.import_run(job_id=job.pk) is None

    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and job.result == {}
    assert not Contact.objects.exists()
    assert not (media / f"imports/job-{job.pk}-rejected.csv").exists()


def test_a_redelivered_run_after_the_worker_died_runs_the_job(
    media, django_capture_on_commit_callbacks
):
    job = _started(3, django_capture_on_commit_callbacks)
    with OtherWorker(job.pk):
        # It got this far, then died: its claim went with its connection (or process).
        Job.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, done=1)

    result = importers.import_run(job_id=job.pk)

    assert result is not None and result["created"] == 3
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.done == 3


def test_a_run_after_the_job_finished_changes_nothing(media, django_capture_on_commit_callbacks):
    job = _started(2, django_capture_on_commit_callbacks)
    first = importers.import_run(job_id=job.pk)

    assert first is not None and first["created"] == 2
    assert importers.import_run(job_id=job.pk) is None
    job.refresh_from_db()
    assert job.result["created"] == 2


@pytest.mark.django_db(transaction=True)
def test_two_runs_at_once_import_the_file_once(media):
    rows = [{"手机": f"1380013{i:04d}", "姓名": f"客户{i}"} for i in range(3000)]
    rows.append({"手机": "bad", "姓名": "坏行"})
    job = upload(rows)
    # Started as import_start leaves it; its message is then delivered twice at once.
    Job.objects.filter(pk=job.pk).update(
        params={**job.params, "key": "phone", "tag_ids": [], "started": True}
    )
    out: list = []
    start = threading.Barrier(2)

    def worker() -> None:
        try:
            start.wait(30)
            out.append(importers.import_run(job_id=job.pk))
        except Exception as exc:
            out.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    [thread.start() for thread in threads]
    [thread.join(180) for thread in threads]

    assert not [o for o in out if isinstance(o, Exception)], out
    assert sorted(o is None for o in out) == [False, True]
    job.refresh_from_db()
    assert (job.result["created"], job.result["rejected"]) == (3000, 1)
    assert Contact.objects.count() == 3000
    assert len(_rejected(job, media)) == 2  # the header and the bad row, once

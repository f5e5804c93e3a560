import csv
import datetime as dt
import io
import threading

import openpyxl
import pandas as pd
import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, connections
from django.urls import reverse
from django.utils import translation

from contacts import importers, services
from contacts.importers import ImportFileError, ImportSpec
from contacts.models import Contact, ContactTag, CustomField, Identity, IdentityKind, TagSource
from contacts.signals import contact_changed
from core.errors import DomainError, ValidationFailed
from core.models import AuditLog, Job, JobStatus
from tests.factories import ContactFactory, IdentityFactory, TagFactory, UserFactory

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}

ROWS = [
    {"手机号": "13800138000", "姓名": "林小雨", "性别": "女", "生日": "1990-05-17", "城市": "上海"},
    {
        "手机号": "139 0013 9000",
        "姓名": "王大山",
        "性别": "男",
        "生日": "1985/01/02",
        "城市": "北京",
    },
    {"手机号": "+8613700137000", "姓名": "赵六", "性别": "", "生日": "", "城市": "广州"},
]


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


@pytest.fixture(autouse=True)
def english(settings):
    # Reasons and headers are asserted in English, whatever the locale files translate.
    settings.LANGUAGE_CODE = "en"
    with translation.override("en"):
        yield


def csv_bytes(rows: list[dict], encoding: str = "utf-8") -> bytes:
    return pd.DataFrame(rows).to_csv(index=False).encode(encoding)


def xlsx_bytes(rows: list[dict]) -> bytes:
    buffer = io.BytesIO()
    pd.DataFrame(rows).to_excel(buffer, index=False)
    return buffer.getvalue()


def upload(content: bytes, name: str = "客户.csv", user=None) -> Job:
    return importers.import_upload(file=SimpleUploadedFile(name, content), user=user)


def run(job: Job, capture, *, key: str = "phone", mapping=None, tag_ids=()) -> Job:
    spec = ImportSpec(mapping=mapping or job.params["mapping"], key=key, tag_ids=list(tag_ids))
    with capture(execute=True):
        importers.import_start(job=job, spec=spec)
    job.refresh_from_db()
    return job


def rejected_rows(job: Job, media) -> list[list[str]]:
    raw = (media / job.result["rejected_file"]).read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # Excel needs the BOM to show Chinese
    return list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("utf8.csv", csv_bytes(ROWS, "utf-8")),
        ("bom.csv", b"\xef\xbb\xbf" + csv_bytes(ROWS, "utf-8")),
        ("gbk.csv", csv_bytes(ROWS, "gbk")),
        ("gb18030.csv", csv_bytes([*ROWS[:2], {**ROWS[2], "姓名": "𠀀赵"}], "gb18030")),
        ("客户.xlsx", xlsx_bytes(ROWS)),
    ],
)
def test_imports_every_supported_encoding_and_excel(
    name, content, django_capture_on_commit_callbacks
):
    job = run(upload(content, name), django_capture_on_commit_callbacks)

    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.result["created"] == 3 and job.result["rejected"] == 0
    lin = Contact.objects.get(phone="+8613800138000")
    assert (lin.name, lin.gender, lin.birthday, lin.city) == (
        "林小雨",
        "female",
        dt.date(1990, 5, 17),
        "上海",
    )
    assert Contact.objects.get(phone="+8613900139000").birthday == dt.date(1985, 1, 2)
    assert Contact.objects.get(phone="+8613700137000").name in ("赵六", "𠀀赵")
    assert Identity.objects.filter(kind=IdentityKind.PHONE, value="+8613800138000").exists()
    assert job.done == job.total == 3


def test_headers_are_guessed_in_chinese_and_english():
    CustomField.objects.create(key="shoe_size", label="鞋码", kind="number")
    headers = [
        "手机号",
        "Name",
        "昵称",
        "性别",
        "生日",
        "E-mail",
        "省份",
        "市",
        "来源",
        "渠道码",
        "unionid",
        "会员号",
        "标签",
        "生命周期",
        "鞋码",
        "备注",
    ]

    mapping = importers.guess_mapping(headers=headers)

    assert mapping == {
        "手机号": "phone", "Name": "name", "昵称": "nickname", "性别": "gender",
        "生日": "birthday", "E-mail": "email", "省份": "province", "市": "city",
        "来源": "source", "渠道码": "channel_code", "unionid": "unionid",
        "会员号": "external_id", "标签": "tags", "生命周期": "lifecycle_stage",
        "鞋码": "cf:shoe_size", "备注": "",
    }  # fmt: skip


def test_bad_rows_are_rejected_with_reasons_and_never_block_good_rows(
    media, django_capture_on_commit_callbacks
):
    future = (dt.date.today() + dt.timedelta(days=3)).isoformat()
    rows = [
        {
            "手机号": "13800138000",
            "邮箱": "lin@example.com",
            "性别": "女",
            "生日": "",
            "姓名": "好",
        },
        {"手机号": "12345", "邮箱": "", "性别": "", "生日": "", "姓名": "坏电话"},
        {"手机号": "13900139000", "邮箱": "not-an-email", "性别": "", "生日": "", "姓名": "坏邮箱"},
        {"手机号": "13700137000", "邮箱": "", "性别": "外星", "生日": "", "姓名": "坏性别"},
        {"手机号": "13600136000", "邮箱": "", "性别": "", "生日": future, "姓名": "未来"},
        {"手机号": "13500135000", "邮箱": "", "性别": "", "生日": "1990-13-45", "姓名": "坏日期"},
        {"手机号": "13400134000", "邮箱": "", "性别": "", "生日": "", "姓名": "长" * 101},
        {"手机号": "138-0013-8000", "邮箱": "", "性别": "", "生日": "", "姓名": "重复"},
        {"手机号": "", "邮箱": "", "性别": "", "生日": "", "姓名": "没有手机"},
    ]

    job = run(upload(csv_bytes(rows)), django_capture_on_commit_callbacks)

    assert job.status == JobStatus.SUCCEEDED
    assert (job.result["created"], job.result["updated"], job.result["rejected"]) == (1, 0, 8)
    assert list(Contact.objects.values_list("name", flat=True)) == ["好"]
    header, *body = rejected_rows(job, media)
    assert header == ["Row", "手机号", "邮箱", "性别", "生日", "姓名", "Reason"]
    reasons = {row[0]: row[-1] for row in body}
    assert reasons == {
        "3": "Invalid phone number.",
        "4": "Invalid email.",
        "5": "Gender must be 男/女 or male/female.",
        "6": "Birthday is in the future.",
        "7": "Birthday is not a date like 1990-05-17.",
        "8": "Name is longer than 100 characters.",
        "9": "Duplicate of an earlier row in this file (same key).",
        "10": "The key column “Phone” is empty.",
    }
    assert body[0][1:-1] == ["12345", "", "", "", "坏电话"]  # the row as it was in the file


@pytest.mark.parametrize(
    ("key", "column", "kind", "value", "stored"),
    [
        ("phone", "手机号", IdentityKind.PHONE, "13800138000", "+8613800138000"),
        ("email", "邮箱", IdentityKind.EMAIL, "Lin@Example.com", "lin@example.com"),
        ("external_id", "会员号", IdentityKind.EXTERNAL_ID, "VIP-0001", "VIP-0001"),
        ("unionid", "unionid", IdentityKind.WECHAT_UNIONID, "oUnion123", "oUnion123"),
    ],
)
def test_upserts_by_each_key(key, column, kind, value, stored, django_capture_on_commit_callbacks):
    existing = ContactFactory(name="旧名字", city="杭州", phone="")
    IdentityFactory(contact=existing, kind=kind, value=stored)
    rows = [
        {column: value, "姓名": "新名字", "城市": ""},
        {column: "other-2", "姓名": "新人", "城市": ""},
    ]
    if key == "phone":
        rows[1][column] = "13900139000"
    elif key == "email":
        rows[1][column] = "new@example.com"

    job = run(upload(csv_bytes(rows)), django_capture_on_commit_callbacks, key=key)

    assert job.status == JobStatus.SUCCEEDED, job.error
    assert (job.result["created"], job.result["updated"]) == (1, 1)
    existing.refresh_from_db()
    assert existing.name == "新名字"
    assert existing.city == "杭州"  # an empty cell keeps what the contact had
    assert Contact.objects.count() == 2
    assert Identity.objects.filter(kind=kind).count() == 2


def test_tags_from_the_form_and_the_file_are_applied(django_capture_on_commit_callbacks):
    vip = TagFactory(name="VIP")
    rows = [
        {"手机号": "13800138000", "标签": "老客，高价值、VIP"},
        {"手机号": "13900139000", "标签": ""},
    ]

    job = run(upload(csv_bytes(rows)), django_capture_on_commit_callbacks, tag_ids=[vip.pk])

    assert job.status == JobStatus.SUCCEEDED, job.error
    lin = Contact.objects.get(phone="+8613800138000")
    names = set(ContactTag.objects.filter(contact=lin).values_list("tag__name", flat=True))
    assert names == {"老客", "高价值", "VIP"}
    assert ContactTag.objects.filter(contact=lin, tag__name="老客").get().tag.group.name == "导入"
    other = Contact.objects.get(phone="+8613900139000")
    assert list(ContactTag.objects.filter(contact=other).values_list("tag__name", flat=True)) == [
        "VIP"
    ]
    assert set(ContactTag.objects.values_list("source", flat=True)) == {TagSource.IMPORT}


def test_reimport_is_idempotent(django_capture_on_commit_callbacks):
    content = csv_bytes([{**r, "标签": "导入测试"} for r in ROWS])
    first = run(upload(content), django_capture_on_commit_callbacks)
    counts = (Contact.objects.count(), Identity.objects.count(), ContactTag.objects.count())

    second = run(upload(content), django_capture_on_commit_callbacks)

    assert first.result["created"] == 3
    assert (second.result["created"], second.result["updated"], second.result["unchanged"]) == (
        0,
        0,
        3,
    )
    assert (Contact.objects.count(), Identity.objects.count(), ContactTag.objects.count()) == counts


def test_custom_fields_and_lifecycle_stage_are_validated(media, django_capture_on_commit_callbacks):
    CustomField.objects.create(key="shoe_size", label="鞋码", kind="number")
    rows = [
        {"手机号": "13800138000", "鞋码": "42", "生命周期": "首购"},
        {"手机号": "13900139000", "鞋码": "大号", "生命周期": ""},
        {"手机号": "13700137000", "鞋码": "", "生命周期": "火星人"},
    ]

    job = run(upload(csv_bytes(rows)), django_capture_on_commit_callbacks)

    assert job.status == JobStatus.SUCCEEDED, job.error
    lin = Contact.objects.get(phone="+8613800138000")
    assert lin.lifecycle_stage_id == "first_purchase"
    assert "shoe_size" in lin.attributes
    reasons = {row[0]: row[-1] for row in rejected_rows(job, media)[1:]}
    assert set(reasons) == {"3", "4"}
    assert reasons["4"] == "Unknown lifecycle stage."


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe\x00\x01garbage\x00\x00\x13\x37" * 50,
        "手机号,姓名\n13800138000,林\n".encode() + b"\x81\x20\xff\xff\n",
    ],
)
def test_undecodable_files_are_refused_and_nothing_is_stored(content, media):
    with pytest.raises(ImportFileError):
        upload(content)

    assert not Job.objects.exists()
    assert not list((media / "imports").glob("*"))
    assert not Contact.objects.exists()


def test_a_fake_xlsx_is_refused(media):
    with pytest.raises(ImportFileError):
        upload(b"not a zip at all", name="客户.xlsx")
    assert not Job.objects.exists()


def test_crash_mid_import_keeps_committed_chunks_and_marks_the_job_failed(
    monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(importers, "CHUNK_ROWS", 2)
    real_write = importers.import_chunk_write
    calls = []

    def flaky(**kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real_write(**kwargs)

    monkeypatch.setattr(importers, "import_chunk_write", flaky)
    rows = [{"手机号": f"1380013800{i}", "姓名": f"客户{i}"} for i in range(5)]

    job = run(upload(csv_bytes(rows)), django_capture_on_commit_callbacks)

    assert job.status == JobStatus.FAILED
    assert "disk full" in job.error
    assert Contact.objects.count() == 2
    assert AuditLog.objects.filter(action="contacts_import_failed").exists()


def test_audit_log_and_change_signal(django_capture_on_commit_callbacks):
    received = []

    def listener(sender, contact_ids, **kwargs):
        received.extend(contact_ids)

    contact_changed.connect(listener)
    try:
        job = run(upload(csv_bytes(ROWS)), django_capture_on_commit_callbacks)
    finally:
        contact_changed.disconnect(listener)

    assert sorted(received) == sorted(Contact.objects.values_list("pk", flat=True))
    log = AuditLog.objects.get(action="contacts_import")
    assert log.object_id == str(job.pk) and log.details["created"] == 3


def test_chunks_share_duplicate_detection(monkeypatch, media, django_capture_on_commit_callbacks):
    monkeypatch.setattr(importers, "CHUNK_ROWS", 2)
    rows = [{"手机号": p} for p in ("13800138000", "13900139000", "13700137000", "13800138000")]

    job = run(upload(csv_bytes(rows)), django_capture_on_commit_callbacks)

    assert (job.result["created"], job.result["rejected"]) == (3, 1)
    assert rejected_rows(job, media)[1][0] == "5"


# --- Views ------------------------------------------------------------------------------------


@pytest.fixture
def admin_client(client):
    client.force_login(UserFactory(username="importer"))
    return client


def test_upload_mapping_preview_and_start_through_the_ui(
    admin_client, django_capture_on_commit_callbacks
):
    rows = [*ROWS, {"手机号": "bad", "姓名": "坏", "性别": "", "生日": "", "城市": ""}]
    page = admin_client.get(reverse("contacts_io:import"))
    assert page.status_code == 200 and 'enctype="multipart/form-data"' in page.content.decode()

    response = admin_client.post(
        reverse("contacts_io:import"), {"file": SimpleUploadedFile("客户.csv", csv_bytes(rows))}
    )
    job = Job.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("contacts_io:import_mapping", args=[job.pk])

    mapping_page = admin_client.get(response["Location"]).content.decode()
    assert 'id="import-preview"' in mapping_page and "林小雨" in mapping_page
    assert '<option value="phone" selected>' in mapping_page

    guessed = job.params["mapping"]
    form = {f"col_{i}": guessed[h] for i, h in enumerate(job.params["headers"])}
    preview = admin_client.post(
        response["Location"], {**form, "key": "phone", "action": "preview"}, **HX
    )
    fragment = preview.content.decode()
    assert "<html" not in fragment and 'id="import-preview"' in fragment
    assert "row-error" in fragment
    assert not Contact.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):
        started = admin_client.post(
            response["Location"], {**form, "key": "phone", "action": "start"}
        )
    assert started.status_code == 302
    assert started["Location"] == reverse("contacts_io:job", args=[job.pk])
    assert Contact.objects.count() == 3

    full = admin_client.get(started["Location"]).content.decode()
    assert 'id="job-progress"' in full and "<html" in full
    poll = admin_client.get(
        started["Location"], HTTP_HX_TARGET="job-progress", **HX
    ).content.decode()
    assert "<html" not in poll and "hx-trigger" not in poll  # finished: polling stops
    download = admin_client.get(reverse("contacts_io:job_download", args=[job.pk]))
    assert download.status_code == 200
    assert b"".join(download.streaming_content).startswith(b"\xef\xbb\xbf")


def test_running_job_partial_polls_every_second(admin_client):
    job = Job.objects.create(kind=importers.JOB_KIND, status=JobStatus.RUNNING, total=10, done=4,
                             created_by=UserFactory(username="importer"))  # fmt: skip

    fragment = admin_client.get(reverse("contacts_io:job", args=[job.pk]), **HX).content.decode()

    assert 'hx-trigger="every 1s"' in fragment and 'value="40"' in fragment


def test_upload_errors_are_shown_on_the_form(admin_client):
    response = admin_client.post(
        reverse("contacts_io:import"), {"file": SimpleUploadedFile("x.csv", b"\x00\x01\xff" * 30)}
    )
    assert response.status_code == 400
    assert "looks binary" in response.content.decode()
    assert not Job.objects.exists()


def test_other_users_cannot_see_a_job(client):
    owner = UserFactory(username="owner", is_superuser=False)
    job = Job.objects.create(kind=importers.JOB_KIND, created_by=owner)
    client.force_login(UserFactory(username="nosy", is_superuser=False))

    assert client.get(reverse("contacts_io:job", args=[job.pk])).status_code == 404
    assert client.get(reverse("contacts_io:import")).status_code == 403


def test_xlsx_dates_and_numbers_are_read_as_text(django_capture_on_commit_callbacks):
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(["手机", "生日"])
    sheet.append([13800138000, dt.datetime(1990, 5, 17)])
    buffer = io.BytesIO()
    workbook.save(buffer)

    job = run(upload(buffer.getvalue(), "a.xlsx"), django_capture_on_commit_callbacks)

    assert job.result["created"] == 1, job.result
    assert Contact.objects.get().birthday == dt.date(1990, 5, 17)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1990-05-17", "1990-05-17"),
        ("1990/5/7", "1990-05-07"),
        ("1990.05.17", "1990-05-17"),
        ("19900517", "1990-05-17"),
        ("1990年05月17日", "1990-05-17"),
        ("1990-05-17 00:00:00", "1990-05-17"),
    ],
)
def test_birthday_spellings(raw, expected):
    spec = ImportSpec(mapping={"手机号": "phone", "生日": "birthday"}, key="phone")
    frame = pd.DataFrame([{"手机号": "13800138000", "生日": raw}], dtype=str)

    good, bad = importers.prepare_chunk(frame, spec=spec, state=importers.ChunkState.load())

    assert bad.empty, bad["_reason"].tolist()
    assert good["birthday"].tolist() == [expected]


@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        ({"手机号": "phone"}, "email"),  # the key column is not mapped
        ({"手机号": "phone", "电话": "phone"}, "phone"),  # two columns for one field
        ({"手机号": "phone", "鞋码": "cf:unknown"}, "phone"),  # unknown custom field
        ({"手机号": "phone"}, "name"),  # not an upsert key
    ],
)
def test_impossible_mappings_are_refused(mapping, key):
    with pytest.raises(ValidationFailed):
        ImportSpec(mapping=mapping, key=key)


# --- Phone normalisation, races and failed jobs ------------------------------------------------


def _api_phone(raw: str) -> str | None:
    try:
        return services.normalize_phone(raw)
    except DomainError:
        return None


ODD_PHONES = [
    "13800138000",
    "19912345678",
    "14012345678",  # 140 is no Chinese mobile range
    "14512345678",
    "16212345678",
    "16012345678",
    "17400012345",  # 1740[0-5] is a satellite range
    "17409012345",
    "17912345678",  # 179xx is a carrier prefix
    "17951001380",
    "11012345678",
    "12012345678",
    "10012345678",
    "1380013800",  # one digit short
    "138001380000",  # one digit long
    "１３８００１３８０００",  # full-width digits
    "+8613800138000",
    "008613800138000",
    "86 138 0013 8000",
    "138-0013-8000",
    "(010) 6552 9988",
    "02165529988",
    "0755-8888 6666",
    "4008123123",
    "95588",
    "+1 650 253 0000",
    "+44 20 7946 0958",
    "abc",
    "13800138000abc",
    "1" * 31,
    "+",
    "0",
]


def test_phones_are_normalised_exactly_like_the_api():
    # Every second-and-third digit range and a spread of four-digit ones, so that the
    # column-wise fast path is compared against normalize_phone across all mobile prefixes.
    generated = [f"1{p:02d}{s:08d}" for p in range(100) for s in (0, 12345678, 99999999)]
    generated += [f"1{p:03d}{p * 7919 % 10**7:07d}" for p in range(1000)]
    generated += [f"17{p:02d}{s:07d}" for p in range(100) for s in (0, 5000000)]
    values = pd.Series(ODD_PHONES + generated)

    ours = importers._normalise_phones(values)

    expected = [_api_phone(v) for v in values]
    assert ours.tolist() == expected
    assert any(e is None for e in expected) and any(e is not None for e in expected)


def test_imported_phones_are_accepted_and_rejected_like_the_api(
    media, django_capture_on_commit_callbacks
):
    rows = [{"手机号": p, "姓名": f"客户{i}"} for i, p in enumerate(ODD_PHONES)]

    job = run(upload(csv_bytes(rows)), django_capture_on_commit_callbacks)

    expected = {p: _api_phone(p) for p in ODD_PHONES}
    valid = {e for e in expected.values() if e}
    stored = set(Identity.objects.filter(kind=IdentityKind.PHONE).values_list("value", flat=True))
    assert stored == valid
    duplicates = len([e for e in expected.values() if e]) - len(valid)
    rejected = [r for r in rejected_rows(job, media)[1:]]
    assert {r[1] for r in rejected if "Invalid phone" in r[-1]} == {
        p for p, e in expected.items() if e is None
    }
    assert job.result["rejected"] == len(ODD_PHONES) - len(valid)
    assert duplicates == len([r for r in rejected if "Duplicate" in r[-1]])


def _two_new_people(key: str) -> tuple[pd.DataFrame, ImportSpec]:
    spec = ImportSpec(mapping={"手机号": "phone", "邮箱": "email", "姓名": "name"}, key=key)
    frame = pd.DataFrame(
        [
            {"手机号": "13800138000", "邮箱": "lin@example.com", "姓名": "林小雨"},
            {"手机号": "13900139000", "邮箱": "wang@example.com", "姓名": "王大山"},
        ]
    )
    good, bad = importers.prepare_chunk(frame, spec=spec, state=importers.ChunkState.load())
    assert bad.empty
    return good, spec


def _identify_taking(key: str) -> Contact:
    """An identify call from the API, taking the first row's key."""
    value = {"phone": "13800138000", "email": "lin@example.com"}[key]
    return services.identify(
        identities=[services.IdentityInput(kind=key, value=value)], traits={"name": "API"}
    ).contact


def _assert_nobody_half_written() -> None:
    for contact in Contact.objects.all():
        kinds = set(contact.identities.values_list("kind", flat=True))
        assert {IdentityKind.PHONE, IdentityKind.EMAIL} <= kinds
    assert Identity.objects.count() == 2 * Contact.objects.count()


@pytest.mark.parametrize("key", ["phone", "email"])
def test_a_key_identity_created_between_match_and_write_makes_the_row_its_update(monkeypatch, key):
    good, spec = _two_new_people(key)
    match = importers.import_chunk_match
    owners: list[Contact] = []

    def identify_meanwhile(**kwargs):
        # SQLite's write lock keeps other connections out, so the identify call runs inside
        # the chunk's transaction: after the first match (the race), and again before the
        # second, where its commit would be seen (the first went with the attempt's rollback).
        if owners:
            owners.append(_identify_taking(key))
            return match(**kwargs)
        matched = match(**kwargs)
        assert matched.new == 2
        owners.append(_identify_taking(key))
        return matched

    monkeypatch.setattr(importers, "import_chunk_match", identify_meanwhile)

    outcome = importers.import_chunk_write(
        good=good, spec=spec, resolver=importers.TagResolver(), collect=True
    )

    assert len(owners) == 2  # the chunk was matched again
    assert (outcome.created, outcome.updated, outcome.rejected) == (1, 1, [])
    assert sorted(outcome.contact_ids) == sorted(Contact.objects.values_list("pk", flat=True))
    assert Contact.objects.count() == 2  # no second person for the raced key
    owner = Contact.objects.get(pk=owners[-1].pk)
    assert owner.name == "林小雨" and owner.phone == "+8613800138000"
    assert owner.email == "lin@example.com"
    _assert_nobody_half_written()


@pytest.mark.parametrize("key", ["phone", "email"])
def test_a_row_whose_key_is_taken_on_every_attempt_is_rejected_with_the_reason(
    monkeypatch, media, django_capture_on_commit_callbacks, key
):
    match = importers.import_chunk_match
    owners: list[Contact] = []

    def identify_each_time(**kwargs):
        matched = match(**kwargs)
        owners.append(_identify_taking(key))
        return matched

    monkeypatch.setattr(importers, "import_chunk_match", identify_each_time)
    rows = [
        {"手机号": "13800138000", "邮箱": "lin@example.com", "姓名": "林小雨"},
        {"手机号": "13900139000", "邮箱": "wang@example.com", "姓名": "王大山"},
    ]

    job = run(upload(csv_bytes(rows)), django_capture_on_commit_callbacks, key=key)

    # Bounded: the last attempt rejects the row rather than trying again.
    assert len(owners) == importers.CHUNK_ATTEMPTS
    assert job.status == JobStatus.SUCCEEDED
    assert (job.result["created"], job.result["updated"], job.result["rejected"]) == (1, 0, 1)
    [_header, rejected] = rejected_rows(job, media)
    field = {"phone": "Phone", "email": "Email"}[key]
    assert rejected[0] == "2"
    assert rejected[-1] == (
        f"{field} was given to another contact (ID {owners[-1].pk}) while this row was "
        "written; import the row again to update that contact."
    )
    # Nothing of the row was written: the contact that took the key is as identify left it.
    owner = Contact.objects.get(pk=owners[-1].pk)
    assert owner.name == "API"
    assert set(owner.identities.values_list("kind", flat=True)) == {key}
    assert Contact.objects.exclude(pk=owner.pk).get().name == "王大山"


def test_rejected_rows_of_a_failed_import_can_be_downloaded(
    monkeypatch, media, client, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(importers, "CHUNK_ROWS", 2)
    real_write = importers.import_chunk_write
    calls = []

    def flaky(**kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real_write(**kwargs)

    monkeypatch.setattr(importers, "import_chunk_write", flaky)
    owner = UserFactory(username="importer", is_superuser=False)
    owner.user_permissions.add(Permission.objects.get(codename="add_contact"))
    rows = [{"手机号": p} for p in ("13800138000", "bad", "13900139000", "13700137000")]
    job = run(upload(csv_bytes(rows), user=owner), django_capture_on_commit_callbacks)
    assert job.status == JobStatus.FAILED and job.result["rejected"] == 1

    client.force_login(owner)
    page = client.get(reverse("contacts_io:job", args=[job.pk])).content.decode()
    link = reverse("contacts_io:job_download", args=[job.pk])
    assert 'id="import-partial-result"' in page and link in page
    download = client.get(link)
    assert download.status_code == 200
    content = b"".join(download.streaming_content).decode("utf-8-sig")
    assert "bad" in content and "Invalid phone number." in content

    client.force_login(UserFactory(username="nosy", is_superuser=False))
    assert client.get(link).status_code == 404


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="needs a second real connection (PostgreSQL)"
)
def test_an_identify_committed_by_another_connection_mid_chunk_is_respected(monkeypatch):
    spec = ImportSpec(mapping={"手机号": "phone", "姓名": "name"}, key="phone")
    frame = pd.DataFrame([{"手机号": "13800138000", "姓名": "林小雨"}])
    good, _bad = importers.prepare_chunk(frame, spec=spec, state=importers.ChunkState.load())
    match = importers.import_chunk_match
    attempts: list[int] = []
    owners = []

    def identify_elsewhere() -> None:
        try:
            owners.append(
                services.identify(
                    identities=[services.IdentityInput(kind="phone", value="13800138000")]
                ).contact.pk
            )
        finally:
            connections.close_all()

    def match_then_identify_elsewhere(**kwargs):
        matched = match(**kwargs)
        attempts.append(matched.new)
        if len(attempts) == 1:
            # The API commits the same phone on its own connection while the chunk is in
            # flight.
            other = threading.Thread(target=identify_elsewhere)
            other.start()
            other.join(timeout=30)
            assert owners, "identify did not finish"
        return matched

    monkeypatch.setattr(importers, "import_chunk_match", match_then_identify_elsewhere)

    outcome = importers.import_chunk_write(
        good=good, spec=spec, resolver=importers.TagResolver(), collect=True
    )

    # Matched as new, then (rolled back and matched again) as the identify call's contact.
    assert attempts == [1, 0]
    assert (outcome.created, outcome.updated, outcome.contact_ids) == (0, 1, owners)
    assert list(Contact.objects.values_list("pk", "name")) == [(owners[0], "林小雨")]
    assert list(Identity.objects.values_list("contact_id", "value")) == [
        (owners[0], "+8613800138000")
    ]


def test_cells_are_stripped_of_any_whitespace_at_their_ends(django_capture_on_commit_callbacks):
    rows = [
        {"手机号": "13800138000", "姓名": "林小雨", "城市": "上海"},
        {"手机号": "\u300013900139000 ", "姓名": " 王大山\u3000", "城市": "北京\t"},
    ]

    run(upload(csv_bytes(rows)), django_capture_on_commit_callbacks)

    stored = set(Contact.objects.values_list("phone", "name", "city"))
    assert stored == {("+8613800138000", "林小雨", "上海"), ("+8613900139000", "王大山", "北京")}

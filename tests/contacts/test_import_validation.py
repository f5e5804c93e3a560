"""Emails are checked by the API's rule and to the length an identity can hold, and a NUL
character anywhere in a file costs only its row."""

import csv
import io

import pandas as pd
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import translation

from contacts import importers, services
from contacts.importers import ImportSpec
from contacts.models import Contact, Identity, IdentityKind
from core.errors import ValidationFailed
from core.models import Job, JobStatus

pytestmark = pytest.mark.django_db

IDENTITY_LENGTH = Identity._meta.get_field("value").max_length


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


@pytest.fixture(autouse=True)
def english(settings):
    settings.LANGUAGE_CODE = "en"
    with translation.override("en"):
        yield


def run(content: bytes, capture, *, key: str = "phone") -> Job:
    job = importers.import_upload(file=SimpleUploadedFile("客户.csv", content), user=None)
    spec = ImportSpec(mapping=job.params["mapping"], key=key)
    with capture(execute=True):
        importers.import_start(job=job, spec=spec)
    job.refresh_from_db()
    return job


def reasons(job: Job, media) -> dict[str, list[str]]:
    text = (media / job.result["rejected_file"]).read_bytes().decode("utf-8-sig")
    return {row[0]: row[1:] for row in list(csv.reader(io.StringIO(text)))[1:]}


def email_of(length: int) -> str:
    """A valid address of exactly `length` characters: domain labels of at most 50."""
    for local in range(50, 65):
        size = length - local - len("@") - len(".com")
        body = "".join("." if (i + 1) % 51 == 0 else "b" for i in range(size))
        if not body.endswith("."):
            return "a" * local + "@" + body + ".com"
    raise AssertionError(length)


@pytest.mark.parametrize("length", [IDENTITY_LENGTH, IDENTITY_LENGTH + 1, 254])
def test_email_length_follows_what_an_identity_can_hold(length):
    address = email_of(length)
    assert len(address) == length
    spec = ImportSpec(mapping={"邮箱": "email"}, key="email")

    good, bad = importers.prepare_chunk(
        pd.DataFrame({"邮箱": [address]}), spec=spec, state=importers.ChunkState.load()
    )

    if length <= IDENTITY_LENGTH:
        assert len(good) == 1 and bad.empty
        assert services.normalize_identity(services.IdentityInput("email", address))
    else:
        assert list(bad["_reason"]) == [f"Email is longer than {IDENTITY_LENGTH} characters."]
        with pytest.raises(ValidationFailed):  # the API refuses it too
            services.normalize_identity(services.IdentityInput("email", address))


def test_a_too_long_email_costs_its_row_not_the_rest_of_the_file(
    monkeypatch, media, django_capture_on_commit_callbacks
):
    # On PostgreSQL the identity INSERT of the chunk used to fail and stop the job.
    monkeypatch.setattr(importers, "CHUNK_ROWS", 2)
    rows = [
        {"手机号": "13800138000", "邮箱": email_of(200)},
        {"手机号": "13900139000", "邮箱": "ok@example.com"},
        {"手机号": "13700137000", "邮箱": "later@example.com"},
    ]

    job = run(pd.DataFrame(rows).to_csv(index=False).encode(), django_capture_on_commit_callbacks)

    assert job.status == JobStatus.SUCCEEDED, job.error
    assert (job.result["created"], job.result["rejected"]) == (2, 1)
    assert reasons(job, media)["2"][-1] == f"Email is longer than {IDENTITY_LENGTH} characters."
    assert set(
        Identity.objects.filter(kind=IdentityKind.EMAIL).values_list("value", flat=True)
    ) == {"ok@example.com", "later@example.com"}


EMAILS = [
    "lin@example.com",
    "Lin.Xiao-Yu+vip@Mail.Example.COM",
    "a@b.c",
    "a@b.co",
    "a@b.c1",
    "a@example",
    "a@localhost",
    "a@[127.0.0.1]",
    "a@[::1]",
    "a@[999.0.0.1]",
    "a@1.2.3.4",
    "a..b@example.com",
    ".a@example.com",
    "a.@example.com",
    "a@-example.com",
    "a@example-.com",
    "a@example..com",
    "a@example.com.",
    '"quoted local"@example.com',
    '"a\\"b"@example.com',
    "用户@例子.广告",
    "a@例子.中国",
    "a@b.xn--fiqs8s",
    "a@xn--fiqs8s",
    "a b@example.com",
    "a@b@example.com",
    "@example.com",
    "a@",
    "no-at-sign",
    "a@exa_mple.com",
    "a@" + "b" * 64 + ".com",
    "a@" + "b" * 63 + ".com",
    "x" * 65 + "@example.com",
]


def _api_accepts(address: str) -> bool:
    try:
        services.normalize_identity(services.IdentityInput(IdentityKind.EMAIL, address))
    except ValidationFailed:
        return False
    return True


def test_emails_are_accepted_and_refused_exactly_like_the_api():
    rows = pd.DataFrame(
        {"手机号": [f"1380013{i:04d}" for i in range(len(EMAILS))], "邮箱": EMAILS}, dtype=str
    )
    spec = ImportSpec(mapping={"手机号": "phone", "邮箱": "email"}, key="phone")

    _good, bad = importers.prepare_chunk(rows, spec=spec, state=importers.ChunkState.load())

    refused = dict(zip(bad["邮箱"], bad["_reason"], strict=True))
    assert set(refused.values()) <= {"Invalid email."}
    verdicts = {address: address not in refused for address in EMAILS}
    assert verdicts == {address: _api_accepts(address) for address in EMAILS}
    assert not verdicts["a@b.c"] and verdicts["lin@example.com"] and verdicts["a@[127.0.0.1]"]


def test_a_nul_after_the_first_64_kb_rejects_only_its_row(
    media, django_capture_on_commit_callbacks
):
    rows = [f"138{i:08d},客户{i},备注{i}" for i in range(3000)]
    head = "手机号,姓名,说明\n" + "\n".join(rows) + "\n"
    tail = "13912345678,坏\x00名,\n13912345679,好,不用的列\x00\n13912345670,最后,\n"
    content = (head + tail).encode()
    assert content.index(b"\x00") > 65536

    job = run(content, django_capture_on_commit_callbacks)

    assert job.status == JobStatus.SUCCEEDED, job.error
    assert (job.result["created"], job.result["rejected"]) == (3002, 1)
    rejected = reasons(job, media)
    assert list(rejected) == ["3002"]  # the header is row 1
    assert rejected["3002"] == [
        "13912345678",
        "坏\x00名",
        "",
        "Name contains the NUL character (U+0000).",
    ]
    assert Contact.objects.filter(phone="+8613912345670", name="最后").exists()
    # An unmapped column is never stored, so its NUL costs nothing.
    assert Contact.objects.filter(phone="+8613912345679", name="好").exists()


def test_a_nul_in_the_key_is_named_once():
    spec = ImportSpec(mapping={"手机号": "phone", "姓名": "name"}, key="phone")
    frame = pd.DataFrame({"手机号": ["1380013\x008000"], "姓名": ["林"]}, dtype=str)

    good, bad = importers.prepare_chunk(frame, spec=spec, state=importers.ChunkState.load())

    assert good.empty
    assert list(bad["_reason"]) == ["Phone contains the NUL character (U+0000)."]


def test_a_file_that_starts_binary_is_still_refused_at_upload(media):
    with pytest.raises(importers.ImportFileError, match="binary"):
        importers.import_upload(
            file=SimpleUploadedFile("客户.csv", b"\x00" * 10 + b"phone\n"), user=None
        )
    assert not Job.objects.exists()

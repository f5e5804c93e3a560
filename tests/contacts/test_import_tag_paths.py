"""A tags cell names a tag as the API does: "兴趣/护肤" is the tag 护肤 of the group 兴趣,
never a new tag called "兴趣/护肤" in the import's group. A "group/name" that names no tag is
refused, as the API refuses it; a plain name works as before (any group's tag, else created
in 导入)."""

import pandas as pd
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from contacts import exporters, importers, services
from contacts.importers import IMPORT_TAG_GROUP, ImportSpec
from contacts.models import Contact, ContactTag, Tag, TagGroup
from core.errors import ValidationFailed
from core.models import JobStatus
from tests.contacts.importing import counts, reasons, run, upload
from tests.factories import ContactFactory, TagFactory, TagGroupFactory, UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("media", "english")]


@pytest.fixture
def skincare() -> Tag:
    return TagFactory(group=TagGroupFactory(name="兴趣"), name="护肤")


@pytest.fixture
def high_value() -> Tag:
    return TagFactory(group=TagGroupFactory(name="价值"), name="高价值")


def tags_of(external_id: str) -> set[str]:
    contact = Contact.objects.get(identities__value=external_id)
    return {str(ct.tag) for ct in ContactTag.objects.filter(contact=contact).select_related("tag")}


def test_a_group_and_name_cell_tags_with_the_existing_tag(
    skincare, django_capture_on_commit_callbacks
):
    tags_before = Tag.objects.count()

    job = run([{"会员号": "K1", "标签": "兴趣/护肤"}], django_capture_on_commit_callbacks)

    assert counts(job) == (1, 0, 0, 0)
    assert ContactTag.objects.get().tag == skincare
    # No near-duplicate: neither a tag called "兴趣/护肤" nor the import's group.
    assert Tag.objects.count() == tags_before
    assert not Tag.objects.filter(name__contains="/").exists()
    assert not TagGroup.objects.filter(name=IMPORT_TAG_GROUP).exists()


def test_a_cell_mixes_group_and_name_with_plain_names_and_every_separator(
    skincare, high_value, django_capture_on_commit_callbacks
):
    vip = TagFactory(group=TagGroupFactory(name="渠道"), name="VIP")
    rows = [
        {"会员号": "K1", "标签": "兴趣/护肤，VIP、价值/高价值 | 新客"},
        {"会员号": "K2", "标签": "价值/高价值,兴趣/护肤"},
        {"会员号": "K3", "标签": "VIP"},
    ]

    job = run(rows, django_capture_on_commit_callbacks)

    assert counts(job) == (3, 0, 0, 0)
    assert tags_of("K1") == {"兴趣/护肤", "渠道/VIP", "价值/高价值", f"{IMPORT_TAG_GROUP}/新客"}
    assert tags_of("K2") == {"兴趣/护肤", "价值/高价值"}
    assert tags_of("K3") == {"渠道/VIP"}
    # Only the plain name nobody had was created, in the import's group, as before.
    assert list(
        Tag.objects.filter(group__name=IMPORT_TAG_GROUP).values_list("name", flat=True)
    ) == ["新客"]
    assert ContactTag.objects.filter(tag=vip).count() == 2


@pytest.mark.parametrize(
    "ref",
    ["兴趣/护肤", " 兴趣 / 护肤 ", "兴趣/香水", "美妆/护肤", "/护肤", "兴趣/", "护肤/兴趣"],
)
def test_the_import_accepts_exactly_the_references_the_api_accepts(
    ref, skincare, django_capture_on_commit_callbacks
):
    try:
        expected = services.tags_resolve(refs=[ref])
    except ValidationFailed:
        expected = None

    job = run([{"会员号": "K1", "标签": ref}], django_capture_on_commit_callbacks)

    if expected is None:
        assert counts(job) == (0, 0, 0, 1)
        assert not Contact.objects.exists()
    else:
        assert counts(job) == (1, 0, 0, 0)
        assert [ct.tag for ct in ContactTag.objects.all()] == expected
    assert Tag.objects.count() == 1  # nothing created either way


def test_an_unknown_group_or_tag_rejects_the_row_with_every_other_problem(
    skincare, media, django_capture_on_commit_callbacks
):
    rows = [
        {"会员号": "K1", "邮箱": "", "标签": "兴趣/护肤"},
        {"会员号": "K2", "邮箱": "", "标签": "兴趣/香水"},
        {"会员号": "K3", "邮箱": "", "标签": "美妆/口红|新客"},
        {"会员号": "K4", "邮箱": "not-an-email", "标签": "兴趣/香水、美妆/口红、兴趣/香水"},
        {"会员号": "K5", "邮箱": "", "标签": "新客"},
    ]

    job = run(rows, django_capture_on_commit_callbacks)

    assert job.status == JobStatus.SUCCEEDED
    assert counts(job) == (2, 0, 0, 3)
    assert reasons(job, media) == {
        "3": "Unknown tag “兴趣/香水”: the group “兴趣” has no tag “香水”.",
        "4": "Unknown tag “美妆/口红”: there is no tag group “美妆”.",
        "5": "Invalid email; Unknown tag “兴趣/香水”: the group “兴趣” has no tag “香水”; "
        "Unknown tag “美妆/口红”: there is no tag group “美妆”.",
    }
    # Nothing of a refused row is written: no contact, no tag, no group (新客 of row 4 is
    # created for row 6, which is imported).
    assert set(Contact.objects.values_list("identities__value", flat=True)) == {"K1", "K5"}
    assert not TagGroup.objects.filter(name="美妆").exists()
    assert set(Tag.objects.values_list("name", flat=True)) == {"护肤", "新客"}


def test_the_tags_an_earlier_import_named_with_a_slash_stay_reachable(
    django_capture_on_commit_callbacks,
):
    # Before this fix "兴趣/护肤" became a tag of that name in the import group; it is that
    # group's tag "兴趣/护肤" now, split at the first "/" as the API splits it.
    legacy = TagFactory(group=TagGroupFactory(name=IMPORT_TAG_GROUP), name="兴趣/护肤")

    job = run(
        [{"会员号": "K1", "标签": f"{IMPORT_TAG_GROUP}/兴趣/护肤"}],
        django_capture_on_commit_callbacks,
    )

    assert counts(job) == (1, 0, 0, 0)
    assert ContactTag.objects.get().tag == legacy


def test_only_a_plain_name_must_fit_a_tag(media, django_capture_on_commit_callbacks):
    # A group and a tag of 50 characters each: the reference is longer than a tag name, and
    # names an existing tag.
    long_group, long_name = "组" * 50, "签" * 50
    tag = TagFactory(group=TagGroupFactory(name=long_group), name=long_name)
    rows = [
        {"会员号": "K1", "标签": f"{long_group}/{long_name}"},
        {"会员号": "K2", "标签": "长" * 51},
    ]

    job = run(rows, django_capture_on_commit_callbacks)

    assert counts(job) == (1, 0, 0, 1)
    assert ContactTag.objects.get().tag == tag
    assert reasons(job, media) == {"3": "A tag is longer than 50 characters."}


def test_importing_the_same_file_again_changes_nothing(
    skincare, high_value, django_capture_on_commit_callbacks
):
    rows = [
        {"会员号": "K1", "标签": "兴趣/护肤|价值/高价值"},
        {"会员号": "K2", "标签": "兴趣/护肤"},
    ]
    first = run(rows, django_capture_on_commit_callbacks)
    second = run(rows, django_capture_on_commit_callbacks)

    assert counts(first) == (2, 0, 0, 0)
    assert counts(second) == (0, 0, 2, 0)
    assert ContactTag.objects.count() == 3


def test_a_new_group_and_name_tag_on_a_known_contact_counts_as_an_update(
    skincare, high_value, django_capture_on_commit_callbacks
):
    run([{"会员号": "K1", "标签": "兴趣/护肤"}], django_capture_on_commit_callbacks)

    job = run(
        [{"会员号": "K1", "标签": "兴趣/护肤|价值/高价值"}], django_capture_on_commit_callbacks
    )

    assert counts(job) == (0, 1, 0, 0)
    assert tags_of("K1") == {"兴趣/护肤", "价值/高价值"}


def test_the_preview_shows_the_unknown_tag(skincare):
    job = upload([{"会员号": "K1", "标签": "兴趣/护肤"}, {"会员号": "K2", "标签": "兴趣/香水"}])
    spec = ImportSpec(mapping=job.params["mapping"], key="external_id")

    preview = importers.import_preview(job=job, spec=spec)

    assert [(row["rn"], row["error"]) for row in preview.rows] == [
        (2, ""),
        (3, "Unknown tag “兴趣/香水”: the group “兴趣” has no tag “香水”."),
    ]


def test_a_tag_deleted_while_the_file_is_imported_stops_the_job_with_the_reason(skincare):
    # The rows were checked against the tags of the import's start; the tag went since.
    spec = ImportSpec(mapping={"会员号": "external_id", "标签": "tags"}, key="external_id")
    frame = pd.DataFrame([{"会员号": "K1", "标签": "兴趣/护肤"}])
    good, bad = importers.prepare_chunk(frame, spec=spec, state=importers.ChunkState.load())
    assert bad.empty
    services.tag_delete(tag=skincare)

    with pytest.raises(ValidationFailed) as caught:
        importers.import_chunk_write(
            good=good, spec=spec, resolver=importers.TagResolver(), collect=False
        )

    assert caught.value.message == (
        "The tag “兴趣/护肤” was deleted while the file was being imported; import the file again."
    )
    assert not Contact.objects.exists()  # the chunk is written whole or not at all


def test_a_tag_whose_name_has_a_slash_imports_by_its_whole_name(
    media, django_capture_on_commit_callbacks
):
    # No group is called "2024": the cell is the whole name of an existing tag. A group that
    # exists keeps the "group/name" rule, and an unknown name is still not created.
    double11 = TagFactory(group=TagGroupFactory(name="活动"), name="2024/双11")
    TagFactory(group=TagGroupFactory(name="兴趣"), name="兴趣/旧")
    tags_before = Tag.objects.count()
    rows = [
        {"会员号": "K1", "标签": "2024/双11"},
        {"会员号": "K2", "标签": "新客, 2024/双11"},
        {"会员号": "K3", "标签": "2025/双11"},
        {"会员号": "K4", "标签": "兴趣/旧"},
    ]

    preview = importers.import_preview(
        job=upload(rows),
        spec=ImportSpec(mapping={"会员号": "external_id", "标签": "tags"}, key="external_id"),
    )
    job = run(rows, django_capture_on_commit_callbacks)

    expected = {
        "4": "Unknown tag “2025/双11”: there is no tag group “2025”.",
        "5": "Unknown tag “兴趣/旧”: the group “兴趣” has no tag “旧”.",
    }
    assert {str(row["rn"]): row["error"] for row in preview.rows if row["error"]} == expected
    assert counts(job) == (2, 0, 0, 2)
    assert reasons(job, media) == expected
    assert tags_of("K1") == {"活动/2024/双11"}
    assert tags_of("K2") == {f"{IMPORT_TAG_GROUP}/新客", "活动/2024/双11"}
    assert Tag.objects.count() == tags_before + 1  # only the plain name 新客
    assert ContactTag.objects.filter(tag=double11).count() == 2


def test_an_export_with_a_slash_tag_imports_again_unchanged(
    media, django_capture_on_commit_callbacks
):
    contact = ContactFactory(name="林")
    tag = TagFactory(group=TagGroupFactory(name="活动"), name="2024/双11")
    ContactTag.objects.create(contact=contact, tag=tag)
    # A group named like the start of the tag's name: read as a plain "2024/双11", the cell
    # would name a tag of this group.
    TagGroupFactory(name="2024")
    user = UserFactory(is_superuser=True)
    with django_capture_on_commit_callbacks(execute=True):
        export = exporters.export_start(user=user, filters={})
    export.refresh_from_db()
    content = (media / export.output_file).read_bytes()
    assert "活动/2024/双11".encode() in content

    job = importers.import_upload(file=SimpleUploadedFile("导出.csv", content), user=None)
    spec = ImportSpec(mapping=job.params["mapping"], key="phone")
    with django_capture_on_commit_callbacks(execute=True):
        importers.import_start(job=job, spec=spec)
    job.refresh_from_db()

    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.params["mapping"]["Tags"] == "tags"
    assert counts(job)[3] == 0  # the row is not rejected
    assert Tag.objects.count() == 1
    assert set(ContactTag.objects.values_list("tag", flat=True)) == {tag.pk}
    assert ContactTag.objects.count() == Contact.objects.count()


def test_a_slash_tag_checked_by_its_whole_name_and_deleted_before_writing_stops_the_job():
    tag = TagFactory(group=TagGroupFactory(name="活动"), name="2024/双11")
    spec = ImportSpec(mapping={"会员号": "external_id", "标签": "tags"}, key="external_id")
    frame = pd.DataFrame([{"会员号": "K1", "标签": "2024/双11"}])
    good, bad = importers.prepare_chunk(frame, spec=spec, state=importers.ChunkState.load())
    assert bad.empty
    services.tag_delete(tag=tag)

    with pytest.raises(ValidationFailed) as caught:
        importers.import_chunk_write(
            good=good, spec=spec, resolver=importers.TagResolver(), collect=False
        )

    assert caught.value.message == (
        "The tag “2024/双11” was deleted while the file was being imported; import the file again."
    )
    assert not Tag.objects.filter(name="2024/双11").exists()  # never created from the cell

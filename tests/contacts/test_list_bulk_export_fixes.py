"""The contact list's search, bulk actions and export as an operator meets them: one reload per
search, an export of the ticked rows, labels and date cells in the file, moved expiries counted,
the way back to the filtered list, retired stages, and the export's IP address."""

import csv
import datetime as dt
import io
import re

import openpyxl
import pytest
from django import forms
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import QueryDict
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.translation import ngettext

from contacts import bulk, exporters, importers, roles
from contacts.filters import ContactFilter, contact_filter_checked
from contacts.importers import ImportSpec
from contacts.models import Contact, ContactTag, Stage, TagSource
from core.errors import ValidationFailed
from core.models import AuditLog, Job, JobStatus
from tests.factories import ContactFactory, StoreFactory, TagFactory, user_with_role

# Files under a temporary MEDIA_ROOT; messages compared in English (tests/contacts/conftest.py).
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("media", "english")]

HX = {"HTTP_HX_REQUEST": "true"}
SHANGHAI = "city=%E4%B8%8A%E6%B5%B7"


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def _csv(media, job: Job) -> list[dict[str, str]]:
    text = (media / job.output_file).read_bytes().decode("utf-8-sig")
    return list(csv.DictReader(io.StringIO(text)))


def _exporter(*, store=None):
    """A store clerk who may also export (no built-in role has both): sees their store only."""
    roles.roles_sync()
    user = user_with_role("store_staff", store=store)
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="contacts", codename="export_contact")
    )
    return type(user).objects.get(pk=user.pk)


# --- 1. A search reloads the table once -------------------------------------------------------


def _trigger_specs(trigger: str) -> list[tuple[str, list[str], str]]:
    """The hx-trigger's specs as (event, target selectors or [], modifiers)."""
    specs = []
    for spec in re.split(r",\s*(?![^()]*\))", trigger):
        target = re.search(r"target:\(([^)]*)\)", spec)
        selectors = [s.strip() for s in target.group(1).split(",")] if target else []
        specs.append((spec.split()[0], selectors, spec))
    return specs


def _input_selector(field) -> str:
    """The CSS selector matching a filter field's widget as rendered."""
    widget = field.widget
    if isinstance(widget, forms.Select):
        return "select"
    return f"input[type={widget.attrs.get('type', widget.input_type)}]"


def test_a_search_reloads_the_table_on_typing_and_not_again_when_the_box_loses_focus(
    operator_client,
):
    page = operator_client.get(reverse("contacts:list")).content.decode()
    form = re.search(r'<form class="card filter-bar"[^>]*>', page, re.S).group(0)
    trigger = re.search(r'hx-trigger="([^"]*)"', form).group(1)
    specs = _trigger_specs(trigger)

    # A text box's "change" fires when it loses focus (the click on a row's tick): it must not
    # be among the events that reload the table, or the tick just made is swapped away.
    reloading = {}
    for event, selectors, modifiers in specs:
        assert event in ("input", "change", "submit"), trigger
        if event == "input":
            assert "changed" in modifiers and "delay:" in modifiers, trigger
        if event in ("input", "change"):
            assert selectors, f"{event} without a target reloads on every field: {trigger}"
            for selector in selectors:
                reloading.setdefault(selector, []).append(event)
    assert ("submit", [], "submit") in specs  # Enter and the Filter button
    assert reloading["input[type=search]"] == ["input"]
    assert reloading["input[type=text]"] == ["input"]

    # Every filter of the bar reloads the table by exactly one of these.
    for name, field in ContactFilter(QueryDict()).form.fields.items():
        assert len(reloading.get(_input_selector(field), [])) == 1, (name, trigger)


# --- 2. The export takes the ticked rows ------------------------------------------------------


def test_the_export_button_submits_the_bulk_forms_selection(operator_client):
    ContactFactory(city="上海")

    page = operator_client.get(reverse("contacts:list"), {"city": "上海"}).content.decode()

    button = re.search(r"<button[^>]*>Export these contacts</button>", page).group(0)
    assert 'form="bulk-form"' in button and "formnovalidate" in button
    assert f'formaction="{reverse("contacts_io:export")}?{SHANGHAI}"' in button
    assert 'name="scope"' in page and 'value="上海"' in page  # carried by the bulk form


def test_ticked_rows_are_exported_not_the_whole_filter(
    operator_client, operator, media, django_capture_on_commit_callbacks
):
    first, second, _third = ContactFactory.create_batch(3, city="上海")
    ContactFactory(city="北京")
    export_url = reverse("contacts_io:export")

    carried = operator_client.post(
        f"{export_url}?{SHANGHAI}",
        {"scope": "selected", "ids": [first.pk, second.pk], "city": "上海", "bulk_tag": ""},
    )

    assert carried.status_code == 302
    assert carried["Location"] == f"{export_url}?ids={first.pk}&ids={second.pk}&{SHANGHAI}"
    page = operator_client.get(carried["Location"]).content.decode()
    assert "2 selected contacts will be exported." in _text(page)
    assert f'href="{reverse("contacts:list")}?{SHANGHAI}">Cancel' in page
    with django_capture_on_commit_callbacks(execute=True):
        started = operator_client.post(carried["Location"], {"format": "csv"})

    job = Job.objects.get(kind=exporters.JOB_KIND)
    assert started["Location"] == reverse("contacts_io:job", args=[job.pk])
    assert job.params["filters"] == {"ids": [first.pk, second.pk]}
    assert sorted(int(row["ID"]) for row in _csv(media, job)) == [first.pk, second.pk]
    log = AuditLog.objects.get(action="contacts_export")
    assert log.actor == operator and log.details["rows"] == 2
    assert log.details["filters"] == {"ids": [first.pk, second.pk]}


def test_all_matching_the_filter_exports_the_filter_whatever_is_ticked(operator_client):
    ticked = ContactFactory(city="上海")
    export_url = reverse("contacts_io:export")

    carried = operator_client.post(
        export_url, {"scope": "all", "ids": [ticked.pk], "city": "上海", "tag": []}
    )

    assert carried["Location"] == f"{export_url}?{SHANGHAI}"
    assert "1 contact matches the current filters." in _text(
        operator_client.get(carried["Location"]).content.decode()
    )


def test_exporting_selected_rows_without_a_tick_goes_back_to_the_filtered_list(operator_client):
    ContactFactory(city="上海")

    response = operator_client.post(
        reverse("contacts_io:export"), {"scope": "selected", "city": "上海"}
    )

    assert response["Location"] == f"{reverse('contacts:list')}?{SHANGHAI}"
    assert _messages(response) == ["Select at least one contact, or apply to all."]
    assert not Job.objects.exists()


def test_a_ticked_id_the_user_may_not_see_is_not_exported(
    client, media, django_capture_on_commit_callbacks
):
    store = StoreFactory()
    mine, theirs = ContactFactory(store=store, name="本店客户"), ContactFactory(name="别店客户")
    clerk = _exporter(store=store)
    client.force_login(clerk)
    url = f"{reverse('contacts_io:export')}?ids={mine.pk}&ids={theirs.pk}"

    assert "1 selected contact will be exported." in _text(client.get(url).content.decode())
    with django_capture_on_commit_callbacks(execute=True):
        client.post(url, {"format": "csv"})

    job = Job.objects.get(kind=exporters.JOB_KIND)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert [row["Name"] for row in _csv(media, job)] == ["本店客户"]
    assert AuditLog.objects.get(action="contacts_export", actor=clerk).details["rows"] == 1


def test_an_id_that_is_no_id_is_refused_instead_of_widening(operator):
    ContactFactory()
    filters = exporters.export_filters(QueryDict("ids=abc&city=上海"))

    assert filters == {"ids": ["abc"]}
    with pytest.raises(ValidationFailed):
        exporters.export_queryset(user=operator, filters=filters)


# --- 3. The source column holds the label, and imports back ---------------------------------


def _export(user, capture, *, language: str = "en", fmt: str = "csv") -> Job:
    with translation.override(language), capture(execute=True):
        job = exporters.export_start(user=user, filters={}, fmt=fmt)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    return job


@pytest.mark.parametrize(
    ("language", "header", "imported", "api"),
    [("zh-hans", "来源", "导入", "API"), ("en", "Source", "Import", "API")],
)
def test_the_source_is_written_as_the_list_shows_it(
    operator, media, django_capture_on_commit_callbacks, language, header, imported, api
):
    ContactFactory(name="甲", source="import")
    ContactFactory(name="乙", source="api")
    ContactFactory(name="丙", source="门店活动")  # a client's own word stays as it is

    job = _export(operator, django_capture_on_commit_callbacks, language=language)

    name = "姓名" if language == "zh-hans" else "Name"
    sources = {row[name]: row[header] for row in _csv(media, job)}
    assert sources == {"甲": imported, "乙": api, "丙": "门店活动"}


def _reimport(content: bytes, filename: str, capture) -> Job:
    Contact.objects.all().delete()
    upload = importers.import_upload(file=SimpleUploadedFile(filename, content), user=None)
    spec = ImportSpec(mapping=upload.params["mapping"], key="phone", tag_ids=[])
    with capture(execute=True):
        importers.import_start(job=upload, spec=spec)
    upload.refresh_from_db()
    assert upload.status == JobStatus.SUCCEEDED, upload.error
    return upload


@pytest.mark.parametrize("language", ["zh-hans", "en"])
@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_an_exported_file_imports_back_with_its_sources_and_birthdays(
    operator, media, django_capture_on_commit_callbacks, language, fmt
):
    ContactFactory(name="林小雨", source="miniprogram", birthday=dt.date(1990, 5, 17))
    ContactFactory(name="王刚", source="manual")
    ContactFactory(name="赵敏", source="门店活动", birthday=dt.date(1985, 12, 1))
    job = _export(operator, django_capture_on_commit_callbacks, language=language, fmt=fmt)

    upload = _reimport(
        (media / job.output_file).read_bytes(), f"export.{fmt}", django_capture_on_commit_callbacks
    )

    assert (upload.result["created"], upload.result["rejected"]) == (3, 0)
    rows = {
        name: (source, birthday)
        for name, source, birthday in Contact.objects.values_list("name", "source", "birthday")
    }
    assert rows == {
        "林小雨": ("miniprogram", dt.date(1990, 5, 17)),
        "王刚": ("manual", None),
        "赵敏": ("门店活动", dt.date(1985, 12, 1)),
    }


def test_the_import_reads_a_source_label_of_either_language(
    media, django_capture_on_commit_callbacks
):
    rows = "手机号,来源\n13800138000,导入\n13900139000,Import\n13700137000,门店活动\n"

    _reimport(rows.encode(), "客户.csv", django_capture_on_commit_callbacks)

    assert dict(Contact.objects.values_list("phone", "source")) == {
        "+8613800138000": "import",
        "+8613900139000": "import",
        "+8613700137000": "门店活动",
    }


# --- 4. Dates are date cells in a workbook ----------------------------------------------------


def test_an_xlsx_export_writes_birthday_and_created_as_date_cells(
    operator, media, django_capture_on_commit_callbacks
):
    born = ContactFactory(name="林小雨", birthday=dt.date(1990, 5, 17))
    ContactFactory(name="王刚", birthday=None)
    old = ContactFactory(name="赵敏")
    Contact.objects.filter(pk=old.pk).update(birthday=dt.date(1899, 12, 31))  # before Excel's dates
    created = timezone.localtime(Contact.objects.get(pk=born.pk).created_at)

    job = _export(operator, django_capture_on_commit_callbacks, fmt="xlsx")

    sheet = openpyxl.load_workbook(media / job.output_file).worksheets[0]
    header = [cell.value for cell in sheet[1]]
    birthday, made = header.index("Birthday") + 1, header.index("Created") + 1
    rows = {sheet.cell(r, 2).value: r for r in range(2, sheet.max_row + 1)}
    cell = sheet.cell(rows["林小雨"], birthday)
    assert cell.is_date and cell.number_format == "yyyy-mm-dd"
    assert cell.value == dt.datetime(1990, 5, 17)
    cell = sheet.cell(rows["林小雨"], made)
    assert cell.is_date and cell.number_format == "yyyy-mm-dd hh:mm:ss"
    assert cell.value == created.replace(microsecond=0, tzinfo=None)
    assert sheet.cell(rows["王刚"], birthday).value is None
    assert sheet.cell(rows["赵敏"], birthday).value == "1899-12-31"


def test_a_csv_export_still_writes_dates_as_text(
    operator, media, django_capture_on_commit_callbacks
):
    contact = ContactFactory(name="林小雨", birthday=dt.date(1990, 5, 17))
    ContactFactory(name="王刚", birthday=None)
    created = timezone.localtime(Contact.objects.get(pk=contact.pk).created_at)

    job = _export(operator, django_capture_on_commit_callbacks)

    rows = {row["Name"]: row for row in _csv(media, job)}
    assert rows["林小雨"]["Birthday"] == "1990-05-17"
    assert rows["林小雨"]["Created"] == created.strftime("%Y-%m-%d %H:%M:%S")
    assert rows["王刚"]["Birthday"] == ""


# --- 5. Moved expiries are counted ------------------------------------------------------------


def _future(days: int) -> dt.datetime:
    return (timezone.now() + dt.timedelta(days=days)).replace(microsecond=0)


def _expires_field(when: dt.datetime) -> str:
    return timezone.localtime(when).strftime("%Y-%m-%dT%H:%M")


def test_an_inline_bulk_add_says_how_many_expiries_it_moved(operator_client):
    tag = TagFactory(name="VIP")
    new, untimed, timed, same = ContactFactory.create_batch(4)
    until = _future(30).replace(second=0)
    ContactTag.objects.create(contact=untimed, tag=tag)
    ContactTag.objects.create(contact=timed, tag=tag, expires_at=_future(3))
    ContactTag.objects.create(contact=same, tag=tag, expires_at=until)

    response = operator_client.post(
        reverse("contacts:bulk_tag"),
        {
            "bulk_tag": tag.pk,
            "op": "add",
            "scope": "selected",
            "ids": [new.pk, untimed.pk, timed.pk, same.pk],
            "expires_at": _expires_field(until),
        },
    )

    assert _messages(response) == [
        "Tag “VIP” added to 1 contact. 2 contacts that already had the tag got the new expiry."
    ]
    assert set(ContactTag.objects.filter(tag=tag).values_list("expires_at", flat=True)) == {until}


def test_an_inline_bulk_add_with_one_moved_expiry_says_it_in_the_singular(operator_client):
    tag = TagFactory(name="VIP")
    first, _second = ContactFactory.create_batch(2)
    ContactTag.objects.create(contact=first, tag=tag)

    response = operator_client.post(
        reverse("contacts:bulk_tag"),
        {
            "bulk_tag": tag.pk,
            "op": "add",
            "scope": "all",
            "expires_at": _expires_field(_future(30)),
        },
    )

    assert _messages(response) == [
        "Tag “VIP” added to 1 contact. 1 contact that already had the tag got the new expiry."
    ]


def test_a_bulk_add_without_a_moved_expiry_says_nothing_more(operator_client):
    tag = TagFactory(name="VIP")
    first, _second = ContactFactory.create_batch(2)
    ContactTag.objects.create(contact=first, tag=tag)

    response = operator_client.post(
        reverse("contacts:bulk_tag"), {"bulk_tag": tag.pk, "op": "add", "scope": "all"}
    )

    assert _messages(response) == ["Tag “VIP” added to 1 contact."]


def test_a_background_bulk_job_counts_moved_expiries_across_its_runs(
    operator, operator_client, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(bulk, "INLINE_LIMIT", 5)
    monkeypatch.setattr(bulk, "BATCH_SIZE", 4)
    monkeypatch.setattr(bulk, "BATCHES_PER_RUN", 1)
    tag = TagFactory(name="VIP")
    contacts = ContactFactory.create_batch(12)
    for contact in contacts[:3]:  # moved
        ContactTag.objects.create(contact=contact, tag=tag)
    for contact in contacts[5:8]:  # moved
        ContactTag.objects.create(contact=contact, tag=tag, expires_at=_future(2))
    # An auto-tag keeps its own expiry (contact_tag_add): not moved, not counted.
    ContactTag.objects.create(contact=contacts[11], tag=tag, source=TagSource.RULE)

    with django_capture_on_commit_callbacks(execute=True):
        started = bulk.contacts_bulk_tag_start(
            tag=tag, add=True, actor=operator, filter_params={}, expires_at=_future(30)
        )

    job = Job.objects.get(pk=started.job.pk)
    assert job.status == JobStatus.SUCCEEDED
    assert (job.result["processed"], job.result["changed"]) == (12, 5)
    assert job.result["expiry_moved"] == 6
    page = _text(operator_client.get(reverse("contacts:bulk_job", args=[job.pk])).content.decode())
    assert (
        "Tagged 5 of 12 contacts; the others already had the tag. "
        "6 contacts that already had the tag got the new expiry."
    ) in page


@pytest.mark.parametrize(
    ("moved", "sentence"),
    [
        (0, None),
        (1, "1 contact that already had the tag got the new expiry."),
        (1_234, "1,234 contacts that already had the tag got the new expiry."),
    ],
)
def test_the_job_page_says_moved_expiries_with_their_plural(
    operator_client, operator, moved, sentence
):
    job = Job.objects.create(
        kind=bulk.JOB_KIND,
        status=JobStatus.SUCCEEDED,
        params={"add": True, "tag": "VIP"},
        result={"changed": 10, "processed": 2_000, "expiry_moved": moved},
        created_by=operator,
    )

    page = _text(operator_client.get(reverse("contacts:bulk_job", args=[job.pk])).content.decode())

    assert "Tagged 10 of 2,000 contacts; the others already had the tag." in page
    if sentence:
        assert sentence in page
    else:
        assert "got the new expiry" not in page


def test_a_bulk_add_where_everyone_had_the_tag_says_so(operator_client, operator):
    tag = TagFactory(name="VIP")
    for contact in ContactFactory.create_batch(2):
        ContactTag.objects.create(contact=contact, tag=tag)
    job = Job.objects.create(
        kind=bulk.JOB_KIND,
        status=JobStatus.SUCCEEDED,
        params={"add": True, "tag": "VIP"},
        result={"changed": 0, "processed": 2_000, "expiry_moved": 0},
        created_by=operator,
    )

    inline = operator_client.post(
        reverse("contacts:bulk_tag"), {"bulk_tag": tag.pk, "op": "add", "scope": "all"}
    )
    page = _text(operator_client.get(reverse("contacts:bulk_job", args=[job.pk])).content.decode())

    assert _messages(inline) == ["All 2 contacts already had the tag “VIP”."]
    assert "All 2,000 contacts already had the tag." in page
    assert "Tagged 0" not in page


def test_chinese_runs_the_two_sentences_together(operator_client, operator):
    job = Job.objects.create(
        kind=bulk.JOB_KIND,
        status=JobStatus.SUCCEEDED,
        params={"add": True, "tag": "VIP"},
        result={"changed": 10, "processed": 10, "expiry_moved": 3},
        created_by=operator,
    )

    page = _text(
        operator_client.get(
            reverse("contacts:bulk_job", args=[job.pk]), headers={"accept-language": "zh-hans"}
        ).content.decode()
    )

    with translation.override("zh-hans"):
        first = ngettext("Tagged the %(changed)s contact.", "Tagged all %(changed)s contacts.", 10)
    assert first % {"changed": 10} in page
    assert "。 " not in page.split(first % {"changed": 10}, 1)[1][:5]


# --- 6. The bulk job page leads back to the filtered list ------------------------------------


@pytest.mark.parametrize("scope", ["selected", "all"])
def test_the_bulk_job_page_leads_back_to_the_list_it_was_started_from(
    operator_client, monkeypatch, scope
):
    monkeypatch.setattr(bulk, "INLINE_LIMIT", 1)
    tag = TagFactory()
    shanghai = ContactFactory.create_batch(2, city="上海")

    response = operator_client.post(
        reverse("contacts:bulk_tag"),
        {
            "bulk_tag": tag.pk,
            "op": "add",
            "scope": scope,
            "ids": [c.pk for c in shanghai],
            "city": "上海",
        },
    )

    job = Job.objects.get(kind=bulk.JOB_KIND)
    assert response["Location"] == reverse("contacts:bulk_job", args=[job.pk])
    page = operator_client.get(response["Location"]).content.decode()
    back = f'href="{reverse("contacts:list")}?{SHANGHAI}"'
    assert f"{back}>Contacts</a>" in page
    assert f'<a class="btn btn-ghost" {back}>Back to contacts</a>' in page


def test_an_older_job_leads_back_to_the_filter_it_ran_on(operator_client, operator):
    job = Job.objects.create(
        kind=bulk.JOB_KIND,
        created_by=operator,
        params={"add": True, "tag": "VIP", "filter_params": {"city": ["上海"]}},
    )

    page = operator_client.get(reverse("contacts:bulk_job", args=[job.pk])).content.decode()

    assert f'href="{reverse("contacts:list")}?{SHANGHAI}">Back to contacts' in page


# --- 7. Retired stages can be filtered --------------------------------------------------------


def test_the_stage_filter_lists_retired_stages_last_and_marked(operator_client):
    Stage.objects.create(key="vip_old", name="老会员", position=0, is_active=False)
    retired = ContactFactory(name="老客户", lifecycle_stage_id="vip_old")
    ContactFactory(name="新客户")

    page = operator_client.get(reverse("contacts:list")).content.decode()
    picker = re.search(r'<select name="lifecycle_stage".*?</select>', page, re.S).group(0)
    options = re.findall(r'<option value="([^"]*)"[^>]*>([^<]*)</option>', picker)

    active = list(Stage.objects.filter(is_active=True).values_list("key", "name"))
    assert options == [("", "All stages"), *active, ("vip_old", "老会员 (retired)")]
    table = operator_client.get(reverse("contacts:list"), {"lifecycle_stage": "vip_old"}, **HX)
    assert "老客户" in table.content.decode() and "新客户" not in table.content.decode()
    # "All matching" actions (bulk tag, export) accept it too instead of refusing the filter.
    checked = contact_filter_checked(
        data=QueryDict("lifecycle_stage=vip_old"), queryset=Contact.objects.all()
    )
    assert list(checked.qs) == [retired]


# --- 8. An export records the IP it was started from -----------------------------------------


def test_an_export_started_on_the_page_records_the_ip_as_a_download_does(
    operator_client, operator, django_capture_on_commit_callbacks
):
    ContactFactory()

    with django_capture_on_commit_callbacks(execute=True):
        operator_client.post(
            reverse("contacts_io:export"), {"format": "csv"}, REMOTE_ADDR="203.0.113.7"
        )
    job = Job.objects.get(kind=exporters.JOB_KIND)
    operator_client.get(
        reverse("contacts_io:job_download", args=[job.pk]), REMOTE_ADDR="203.0.113.8"
    )

    assert AuditLog.objects.get(action="contacts_export").ip == "203.0.113.7"
    assert AuditLog.objects.get(action="contacts_export_download").ip == "203.0.113.8"


def test_an_export_started_without_a_request_has_no_ip(
    operator, django_capture_on_commit_callbacks
):
    ContactFactory()

    _export(operator, django_capture_on_commit_callbacks)

    assert AuditLog.objects.get(action="contacts_export").ip is None


def test_the_audit_ip_is_remote_addr_only(rf):
    from core.audit import request_ip

    request = rf.get("/", REMOTE_ADDR="198.51.100.1", HTTP_X_FORWARDED_FOR="192.0.2.66")

    assert request_ip(request) == "198.51.100.1"
    assert request_ip(rf.get("/", REMOTE_ADDR="")) is None
    assert request_ip(None) is None

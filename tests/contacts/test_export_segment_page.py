"""Exporting a segment's members: the page names the segment and leads back to it."""

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import translation

from segments.models import SegmentMembership
from tests.factories import ContactFactory, SegmentFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def english(settings):
    settings.LANGUAGE_CODE = "en"
    with translation.override("en"):
        yield


@pytest.fixture
def segment():
    segment = SegmentFactory(name="上海护肤兴趣")
    for contact in (ContactFactory(city="上海"), ContactFactory(city="杭州")):
        SegmentMembership.objects.create(segment=segment, contact=contact)
    ContactFactory(city="北京")  # not a member
    return segment


def export_url(**params) -> str:
    query = "&".join(f"{key}={value}" for key, value in params.items())
    return f"{reverse('contacts_io:export')}?{query}"


def test_the_page_names_the_segment_and_leads_back_to_it(operator_client, segment):
    page = operator_client.get(export_url(segment=segment.pk)).content.decode()

    detail = reverse("segments:detail", args=[segment.pk])
    header = page.split('<div class="topbar-title">', 1)[1].split("</div>", 1)[0]
    assert f'href="{reverse("segments:list")}"' in header
    assert f'href="{detail}">上海护肤兴趣</a>' in header
    assert reverse("contacts:list") not in header
    assert "<h1>Export members</h1>" in header
    assert "2 members of the segment “上海护肤兴趣” will be exported." in page
    assert "Limited to the chosen segment." not in page
    assert f'<a class="btn btn-ghost" href="{detail}">Cancel</a>' in page


def test_with_contact_filters_too_it_names_the_segment_it_is_limited_to(operator_client, segment):
    page = operator_client.get(export_url(segment=segment.pk, city="上海")).content.decode()

    assert "1 contact matches the current filters." in page
    assert "Limited to the segment “上海护肤兴趣”." in page


def test_the_name_is_escaped(operator_client):
    segment = SegmentFactory(name="<b>VIP</b>")

    page = operator_client.get(export_url(segment=segment.pk)).content.decode()

    assert "&lt;b&gt;VIP&lt;/b&gt;" in page and "<b>VIP</b>" not in page


def test_exporters_who_may_not_see_segments_are_not_told_the_name(client, segment):
    user = UserFactory(username="exporter", is_superuser=False, is_staff=False)
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="contacts", codename__in=["view_contact", "export_contact"]
        )
    )
    client.force_login(user)

    page = client.get(export_url(segment=segment.pk)).content.decode()

    assert "上海护肤兴趣" not in page
    assert reverse("segments:detail", args=[segment.pk]) not in page
    assert "Limited to the chosen segment." in page
    assert f'href="{reverse("contacts:list")}">Contacts</a>' in page


def test_an_unknown_segment_keeps_the_contacts_page(operator_client):
    page = operator_client.get(export_url(segment=987654)).content.decode()

    assert "<h1>Export contacts</h1>" in page
    assert "Limited to the chosen segment." in page


def test_an_export_of_the_contact_list_is_unchanged(operator_client, segment):
    page = operator_client.get(export_url(city="北京")).content.decode()

    assert f'href="{reverse("contacts:list")}">Contacts</a>' in page
    assert "<h1>Export contacts</h1>" in page
    assert "1 contact matches the current filters." in page
    assert "segment" not in page.split('<section class="card form-card">', 1)[1].lower()


def test_the_segment_page_shows_in_chinese(operator_client, segment):
    operator_client.cookies["django_language"] = "zh-hans"

    page = operator_client.get(export_url(segment=segment.pk)).content.decode()

    assert '<html lang="zh-hans">' in page
    assert "导出成员" in page and ">分群</a>" in page

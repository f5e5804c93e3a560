"""A tag's colour goes into a style attribute on every page that shows the tag: only #RRGGBB."""

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from contacts.models import Tag, TagGroup
from tests.factories import TagFactory, TagGroupFactory

pytestmark = pytest.mark.django_db

BAD_COLOURS = ["red", "#fff", "#12345g", "3b82f6", "#3b82f6;", "red; background: url(x)", ""]


@pytest.mark.parametrize("color", BAD_COLOURS)
def test_a_tag_with_anything_but_a_hex_colour_is_invalid(color):
    tag = Tag(group=TagGroupFactory(), name="护肤", color=color)
    with pytest.raises(ValidationError) as exc:
        tag.full_clean()
    assert "color" in exc.value.message_dict


def test_a_hex_colour_is_kept_in_lower_case():
    tag = Tag(group=TagGroupFactory(), name="护肤", color="#3B82F6")
    tag.full_clean()
    assert tag.color == "#3b82f6"


@pytest.mark.parametrize("color", ["red", "x;y:z"])
def test_the_admin_refuses_a_bad_colour_and_stores_nothing(admin_client, color):
    group = TagGroupFactory()
    response = admin_client.post(
        reverse("admin:contacts_tag_add"), {"group": group.pk, "name": "护肤", "color": color}
    )
    assert response.status_code == 200
    assert "color" in response.context["adminform"].form.errors
    assert not Tag.objects.exists()


def test_the_admin_stores_a_good_colour(admin_client):
    group = TagGroupFactory()
    response = admin_client.post(
        reverse("admin:contacts_tag_add"), {"group": group.pk, "name": "护肤", "color": "#DC2626"}
    )
    assert response.status_code == 302
    assert Tag.objects.get().color == "#dc2626"


def test_the_tag_group_inline_refuses_a_bad_colour(admin_client):
    tag = TagFactory(color="#10b981")
    group = tag.group
    url = reverse("admin:contacts_taggroup_change", args=[group.pk])
    data = {
        "name": group.name,
        "position": group.position,
        "tags-TOTAL_FORMS": "1",
        "tags-INITIAL_FORMS": "1",
        "tags-0-id": tag.pk,
        "tags-0-group": group.pk,
        "tags-0-name": tag.name,
        "tags-0-color": "red;x:y",
    }
    response = admin_client.post(url, data)
    assert response.status_code == 200
    (inline,) = response.context["inline_admin_formsets"]
    assert [list(errors) for errors in inline.formset.errors] == [["color"]]
    assert TagGroup.objects.get().tags.get().color == "#10b981"

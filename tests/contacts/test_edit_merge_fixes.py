"""The operator UI audit of the contact edit form, merge and the 360 page: every problem of the
edit form at once, Back after a merge, field labels in messages, unmask audit entries only for a
real reveal, consent evidence in the history, identities masked like phones and emails."""

import datetime as dt
import html
import re

import pytest
from django.urls import reverse
from django.utils import translation

from contacts import pii, roles
from contacts.models import CustomField, IdentityKind, MergeRecord
from contacts.services import (
    IdentityInput,
    consent_record,
    contact_changes_validate,
    contact_merge,
    contact_update,
    normalize_identity,
)
from core.errors import ValidationFailed
from core.models import AuditLog
from tests.contacts.editing import edit_form_data
from tests.factories import ContactFactory, IdentityFactory, StoreFactory, user_with_role

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}
IDENTITY_LENGTH = 191
# A well-formed address longer than an identity may be (191) and shorter than an email (254).
LONG_EMAIL = f"{'a' * 60}@{'b' * 60}.{'c' * 60}.example.com"


def _in(language: str, msgid: str, **params) -> str:
    """The text a service gives under `language`, as the catalog has it."""
    with translation.override(language):
        text = translation.gettext(msgid)
    return text % params if params else text


def _fields_with_errors(page: str) -> set[str]:
    """The names of the inputs the edit page shows an error under."""
    chunks = page.split('<div class="field has-error">')[1:]
    return {re.search(r'name="([^"]+)"', chunk).group(1) for chunk in chunks}


def _future() -> dt.date:
    return dt.date.today() + dt.timedelta(days=400)


@pytest.fixture
def _roles(db):
    roles.roles_sync()


# --- 1. The edit form shows every problem at once ------------------------------------------


def test_the_edit_form_shows_the_birthday_phone_and_email_problems_at_once(operator_client):
    contact = ContactFactory(email="")
    owner = ContactFactory(email="taken@example.com")
    IdentityFactory(contact=owner, kind=IdentityKind.EMAIL, value="taken@example.com")
    data = edit_form_data(
        contact, phone="12345", birthday=_future().isoformat(), email="taken@example.com"
    )

    response = operator_client.post(reverse("contacts:edit", args=[contact.pk]), data)

    assert response.status_code == 200
    errors = response.context["form"].errors
    assert set(errors) == {"birthday", "phone", "email"}
    assert errors["phone"] == [
        _in("zh-hans", "'%(value)s' is not a valid phone number.", value="12345")
    ]
    assert errors["birthday"] == [
        _in("zh-hans", "Field '%(field)s' is in the future.", field="生日")
    ]
    assert errors["email"] == [
        _in(
            "zh-hans",
            "This email belongs to contact %(contact)s; merge the two contacts instead.",
            contact=owner.pk,
        )
    ]
    # Each under its own field.
    assert _fields_with_errors(response.content.decode()) == {"birthday", "phone", "email"}
    contact.refresh_from_db()
    assert contact.birthday is None and contact.email == ""


def test_the_form_s_own_errors_and_the_service_s_are_shown_together(operator_client):
    # A date the form cannot read and an over-long city (its own checks) and a phone the
    # service refuses: all at once.
    contact = ContactFactory()
    data = edit_form_data(contact, birthday="1990-13-45", phone="12345", city="x" * 31)

    response = operator_client.post(reverse("contacts:edit", args=[contact.pk]), data)

    errors = response.context["form"].errors
    assert set(errors) == {"birthday", "phone", "city"}
    contact.refresh_from_db()
    assert contact.city == "上海"


def test_a_valid_form_saves_as_before(operator_client):
    contact = ContactFactory()

    response = operator_client.post(
        reverse("contacts:edit", args=[contact.pk]), edit_form_data(contact, city="北京")
    )

    assert response.status_code == 302
    contact.refresh_from_db()
    assert contact.city == "北京"


def test_the_service_names_every_problem_in_one_error():
    CustomField.objects.create(key="shoe_size", label="鞋码", kind="number")
    contact = ContactFactory()
    owner = ContactFactory(phone="+8613900139000")
    IdentityFactory(contact=owner, kind=IdentityKind.PHONE, value="+8613900139000")
    data = {
        "shoe_size": "big",
        "birthday": _future().isoformat(),
        "email": "not-an-email",
        "phone": "13900139000",
        "city": "北京",
    }

    with translation.override("en"), pytest.raises(ValidationFailed) as exc:
        contact_update(contact=contact, data=data)

    error = exc.value
    # The first problem at the top, as when it is alone; every one in details["errors"].
    assert (error.code, error.message) == (
        "invalid_custom_field",
        "Custom field '鞋码' must be a number.",
    )
    assert error.details["field"] == "shoe_size"
    listed = {e["field"]: e for e in error.details["errors"]}
    assert list(listed) == ["shoe_size", "birthday", "email", "phone"]
    assert listed["birthday"]["code"] == "invalid_field"
    assert listed["email"]["code"] == "invalid_email"
    assert listed["phone"] == {
        "field": "phone",
        "contact_id": owner.pk,
        "code": "identity_taken",
        "message": f"This phone belongs to contact {owner.pk}; merge the two contacts instead.",
    }
    contact.refresh_from_db()
    assert contact.city == "上海"  # nothing stored


def test_one_problem_stays_one_plain_error():
    contact = ContactFactory()

    with pytest.raises(ValidationFailed) as exc:
        contact_changes_validate(contact=contact, data={"phone": "12345", "city": "北京"})

    assert exc.value.code == "invalid_phone"
    assert exc.value.details == {"field": "phone"}


def test_the_api_answers_the_first_problem_and_lists_them_all(api):
    contact = ContactFactory()
    url = f"/api/v1/contacts/{contact.pk}"

    single = api.patch(url, {"phone": "12345"}, format="json")
    several = api.patch(
        url, {"birthday": _future().isoformat(), "phone": "12345", "city": "北京"}, format="json"
    )

    assert single.status_code == several.status_code == 400
    assert single.json()["error"] == {
        "code": "invalid_phone",
        "message": "'12345' is not a valid phone number.",
        "details": {"field": "phone"},
    }
    error = several.json()["error"]
    assert error["code"] == "invalid_field"
    assert error["message"] == "Field 'Birthday' is in the future."
    assert error["details"]["field"] == "birthday"
    assert [(e["field"], e["code"]) for e in error["details"]["errors"]] == [
        ("birthday", "invalid_field"),
        ("phone", "invalid_phone"),
    ]
    contact.refresh_from_db()
    assert contact.city == "上海"


# --- 2. Back after a merge leads to the survivor ---------------------------------------------


def test_back_to_the_preview_after_a_merge_leads_to_the_survivor(operator_client):
    survivor = ContactFactory(name="林小雨")
    duplicate = ContactFactory(name="Lin")
    url = reverse("contacts:merge_preview", args=[survivor.pk, duplicate.pk])
    assert operator_client.post(url).status_code == 302
    record = MergeRecord.objects.get()

    back = operator_client.get(url)

    assert back.status_code == 302
    assert back["Location"] == reverse("contacts:detail", args=[survivor.pk]) + "#contact-merges"
    page = operator_client.get(back["Location"]).content.decode()
    said = _in(
        "zh-hans",
        "“%(duplicate)s” was already merged into “%(survivor)s”. To undo the merge, "
        "use “%(undo)s” under “%(merges)s” on this page.",
        duplicate=f"Lin #{duplicate.pk}",
        survivor=f"林小雨 #{survivor.pk}",
        undo=_in("zh-hans", "Undo merge"),
        merges=_in("zh-hans", "Merged contacts"),
    )
    assert html.escape(said) in page
    assert reverse("contacts:merge_undo", args=[record.pk]) in page


@pytest.mark.parametrize("which", ["swapped", "search", "post again"])
def test_other_ways_back_to_a_done_merge_lead_to_the_survivor(operator_client, which):
    survivor, duplicate = ContactFactory(), ContactFactory()
    contact_merge(survivor=survivor, duplicate=duplicate)
    preview = reverse("contacts:merge_preview", args=[survivor.pk, duplicate.pk])

    if which == "swapped":
        response = operator_client.get(
            reverse("contacts:merge_preview", args=[duplicate.pk, survivor.pk])
        )
    elif which == "search":
        response = operator_client.get(reverse("contacts:merge", args=[duplicate.pk]))
    else:
        response = operator_client.post(preview)

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("contacts:detail", args=[survivor.pk]))
    assert MergeRecord.objects.count() == 1


def test_a_preview_of_unknown_or_invisible_contacts_still_answers_404(client, _roles):
    store = StoreFactory()
    clerk = user_with_role("operator")
    client.force_login(clerk)
    contact = ContactFactory()

    assert (
        client.get(reverse("contacts:merge_preview", args=[contact.pk, 999999])).status_code == 404
    )

    # Merged into a contact the user may not see: nothing is told about it.
    staff = user_with_role("store_staff", store=store)
    staff.user_permissions.add(*clerk.groups.get().permissions.filter(codename="merge_contact"))
    mine = ContactFactory(store=store)
    hidden, gone = ContactFactory(store=StoreFactory()), ContactFactory(store=store)
    contact_merge(survivor=hidden, duplicate=gone)
    client.force_login(staff)
    response = client.get(reverse("contacts:merge_preview", args=[mine.pk, gone.pk]))
    assert response.status_code == 404


# --- 3. Messages name fields and identity kinds by their labels ------------------------------


def test_a_future_birthday_names_the_field_by_its_label_in_english():
    contact = ContactFactory()

    with translation.override("en"), pytest.raises(ValidationFailed) as exc:
        contact_update(contact=contact, data={"birthday": _future().isoformat()})

    assert exc.value.message == "Field 'Birthday' is in the future."
    assert exc.value.details == {"field": "birthday"}


@pytest.mark.parametrize("language", ["zh-hans", "en"])
def test_an_over_long_identity_names_its_kind_by_its_label(language):
    with translation.override(language), pytest.raises(ValidationFailed) as exc:
        normalize_identity(IdentityInput(IdentityKind.EMAIL, "a" * 200 + "@example.com"))
    with translation.override(language):
        label = str(IdentityKind.EMAIL.label)

    assert exc.value.message == _in(
        language,
        "Identity '%(kind)s' is longer than %(max)s characters.",
        kind=label,
        max=IDENTITY_LENGTH,
    )
    assert "'email'" not in exc.value.message and "“email”" not in exc.value.message
    assert exc.value.details == {"kind": "email", "max_length": IDENTITY_LENGTH}


def test_an_openid_without_app_id_names_its_kind_by_its_label(english):
    with pytest.raises(ValidationFailed) as exc:
        normalize_identity(IdentityInput(IdentityKind.MINIPROGRAM_OPENID, "o-1"))

    assert exc.value.message == "Identity 'Mini-program openid' needs the app_id it belongs to."
    assert exc.value.details == {"kind": "miniprogram_openid"}


def test_an_over_long_email_in_the_edit_form_is_refused_at_the_email_field(operator_client):
    contact = ContactFactory(email="")

    response = operator_client.post(
        reverse("contacts:edit", args=[contact.pk]), edit_form_data(contact, email=LONG_EMAIL)
    )

    errors = response.context["form"].errors
    assert errors["email"] == [
        _in(
            "zh-hans",
            "Field '%(field)s' is longer than %(max)s characters.",
            field="邮箱",
            max=IDENTITY_LENGTH,
        )
    ]
    assert "“email”" not in response.content.decode()


def test_the_api_names_an_over_long_email_by_its_label_with_its_key_in_details(api):
    contact = ContactFactory()

    patch = api.patch(f"/api/v1/contacts/{contact.pk}", {"email": LONG_EMAIL}, format="json")
    identify = api.post(
        "/api/v1/identify",
        {
            "identities": [{"kind": "phone", "value": "13800138000"}],
            "traits": {"email": LONG_EMAIL, "birthday": _future().isoformat()},
        },
        format="json",
    )

    assert patch.status_code == identify.status_code == 400
    assert patch.json()["error"] == {
        "code": "invalid_email",
        "message": "Field 'Email' is longer than 191 characters.",
        "details": {"field": "email"},
    }
    # identify checks its traits like a PATCH: every problem, the first at the top, each with
    # identify's own code (a trait, not a field).
    error = identify.json()["error"]
    assert (error["code"], error["details"]["field"]) == ("invalid_email", "email")
    assert [(e["code"], e["message"]) for e in error["details"]["errors"]] == [
        ("invalid_email", "Field 'Email' is longer than 191 characters."),
        ("invalid_trait", "Field 'Birthday' is in the future."),
    ]


# --- 4. The edit form's unmask audit entry only for a real reveal ----------------------------


def _unmask_logs(contact):
    return AuditLog.objects.filter(action="contact.unmask", object_id=str(contact.pk))


def test_opening_the_edit_form_of_a_contact_without_phone_or_email_is_not_logged(
    operator_client,
):
    contact = ContactFactory(phone="", email="")
    url = reverse("contacts:edit", args=[contact.pk])

    for _ in range(3):
        assert operator_client.get(url, **HX).status_code == 200

    assert not _unmask_logs(contact).exists()


def test_opening_the_edit_form_that_shows_a_phone_is_logged_naming_it(operator_client):
    contact = ContactFactory(phone="+8613800138000", email="")

    operator_client.get(reverse("contacts:edit", args=[contact.pk]))

    log = _unmask_logs(contact).get()
    assert log.details == {"fields": ["phone"], "via": "edit_form"}


def test_a_form_sent_back_with_errors_is_not_logged(operator_client):
    contact = ContactFactory(phone="+8613800138000")

    operator_client.post(
        reverse("contacts:edit", args=[contact.pk]), edit_form_data(contact, phone="12345")
    )

    assert not _unmask_logs(contact).exists()


def test_the_unmask_button_still_logs(operator_client):
    contact = ContactFactory(phone="+8613800138000")

    operator_client.post(reverse("contacts:unmask", args=[contact.pk]), **HX)

    assert _unmask_logs(contact).count() == 1


# --- 5. Consent evidence in the history ------------------------------------------------------


def test_consent_evidence_is_shown_escaped_and_shortened(operator_client, operator):
    contact = ContactFactory()
    consent_record(
        contact=contact,
        channel="sms",
        purpose="marketing",
        granted=True,
        source="operator",
        evidence={"note": "纸质表 #12 <script>alert(1)</script>"},
        actor=operator,
    )
    consent_record(
        contact=contact,
        channel="email",
        purpose="marketing",
        granted=True,
        source="api",
        evidence={"page": "/pages/register", "checkbox": "agree_sms"},
    )
    consent_record(
        contact=contact,
        channel="wecom",
        purpose="marketing",
        granted=False,
        source="operator",
        evidence={"note": "客户说" + "不要再联系" * 40},
    )

    page = operator_client.get(reverse("contacts:detail", args=[contact.pk])).content.decode()

    history = page[page.index('<summary class="muted small">') :]
    assert "纸质表 #12 &lt;script&gt;alert(1)&lt;/script&gt;" in history
    assert "<script>alert(1)" not in page
    assert "page: /pages/register; checkbox: agree_sms" in history
    line = re.search(r'title="(客户说[^"]*)">[^:]*: (客户说[^<]*)</div>', history)
    assert line is not None
    full = "客户说" + "不要再联系" * 40
    # Shortened in the line (with the language's ellipsis), whole in its tooltip.
    assert len(line.group(2)) <= 62 and full.startswith(line.group(2)[:57])
    assert line.group(1) == full


def test_consent_recorded_through_the_form_shows_its_evidence(operator_client):
    contact = ContactFactory()
    url = reverse("contacts:consent", args=[contact.pk])

    response = operator_client.post(
        url,
        {
            "channel": "sms",
            "purpose": "marketing",
            "granted": "1",
            "source": "门店",
            "evidence": "表单 #12",
        },
        **HX,
    )

    assert "表单 #12" in response.content.decode()


# --- 6. Identities masked like phones and emails ---------------------------------------------


def _identities(contact):
    IdentityFactory(
        contact=contact, kind=IdentityKind.WECHAT_UNIONID, value="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
    )
    IdentityFactory(
        contact=contact,
        kind=IdentityKind.MINIPROGRAM_OPENID,
        app_id="wxapp1",
        value="o6_bmjrPTlm6_2sgVt7hMZOPfL2M",
    )
    IdentityFactory(contact=contact, kind=IdentityKind.EXTERNAL_ID, value="crm-000123456")
    IdentityFactory(contact=contact, kind=IdentityKind.PHONE, value="+8613800138000")


FULL = ("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "o6_bmjrPTlm6_2sgVt7hMZOPfL2M", "crm-000123456")
MASKED = ("oUpF****eS6o", "wxapp1:o6_b****fL2M", "crm****456", "+86138****8000")


def _panel(page: str) -> str:
    start = page.index('<section id="contact-identities"')
    return page[start : page.index("</section>", start)]


@pytest.mark.parametrize("role", ["store_staff", "analyst"])
def test_roles_without_the_permission_see_every_identity_masked(client, _roles, role):
    store = StoreFactory()
    user = user_with_role(role, store=store if role == "store_staff" else None)
    client.force_login(user)
    contact = ContactFactory(store=store, phone="+8613800138000")
    _identities(contact)

    page = client.get(reverse("contacts:detail", args=[contact.pk])).content.decode()

    panel = _panel(page)
    for value in FULL:
        assert value not in page
    for value in MASKED:
        assert value in panel


def test_operators_see_ids_and_unmask_every_identity_with_an_audit_entry(client, _roles):
    operator = user_with_role("operator")
    client.force_login(operator)
    contact = ContactFactory(phone="+8613800138000")
    _identities(contact)

    page = client.get(reverse("contacts:detail", args=[contact.pk])).content.decode()
    panel = _panel(page)
    assert all(value in panel for value in FULL)  # ids as before
    assert "+86138****8000" in panel and "+8613800138000" not in page

    fragment = client.post(reverse("contacts:unmask", args=[contact.pk]), **HX).content.decode()
    assert fragment.lstrip().startswith('<section id="contact-profile"')
    oob = _panel(fragment)
    assert 'hx-swap-oob="true"' in fragment[fragment.index('<section id="contact-identities"') :]
    assert "+8613800138000" in oob and all(value in oob for value in FULL)

    full = client.post(reverse("contacts:unmask", args=[contact.pk])).content.decode()
    assert "+8613800138000" in _panel(full)
    logs = AuditLog.objects.filter(action="contact.unmask", object_id=str(contact.pk))
    assert logs.count() == 2
    assert "identities" in logs.first().details["fields"]


@pytest.mark.parametrize(
    ("kind", "value", "masked"),
    [
        ("wechat_unionid", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "oUpF****eS6o"),
        ("external_id", "crm-000123456", "crm****456"),
        ("external_id", "ext-42", "e****2"),
        ("anonymous_id", "abc", "****"),
        ("phone", "+8613800138000", "+86138****8000"),
        ("email", "lin@example.com", "l***@example.com"),
    ],
)
def test_identity_masks_keep_a_readable_part(kind, value, masked):
    assert pii.mask_identity(kind, value) == masked

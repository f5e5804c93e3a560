"""At a common laptop width (1280x800, zh-Hans) the contact screens keep their content readable."""

import pytest

from contacts import roles
from contacts.models import ContactTag
from tests.browser.layout import line_count
from tests.factories import (
    ContactFactory,
    StoreFactory,
    TagFactory,
    TagGroupFactory,
    user_with_role,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "pass-1234-word"  # UserFactory's


def _log_in(browser, live_server, username):
    page = browser.new_page(locale="zh-CN", viewport={"width": 1280, "height": 800})
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.locator("form.form-stack button[type=submit]").click()
    page.wait_for_url(f"{live_server.url}/")
    return page


@pytest.fixture
def store_with_tagged_contacts():
    """A store clerk's book as the demo has it: nicknames, owners, stores and several tags."""
    roles.roles_sync()
    store = StoreFactory(name="上海静安店")
    clerk = user_with_role(roles.STORE_STAFF, username="dianyuan", store=store)
    groups = [TagGroupFactory(name=name) for name in ("兴趣", "渠道", "生命周期")]
    tags = [
        TagFactory(group=groups[i % 3], name=name)
        for i, name in enumerate(("护肤", "彩妆", "社群活跃", "门店到访", "潜力客户", "直播间"))
    ]
    contacts = []
    for i in range(6):
        contact = ContactFactory(
            name=f"于昊强{i}", nickname="柠檬不酸", city="上海", store=store, owner=clerk
        )
        for tag in tags[i % 2 : i % 2 + 4]:
            ContactTag.objects.create(contact=contact, tag=tag)
        contacts.append(contact)
    # Imported data can carry a long source; it must not widen the table past the screen.
    ContactFactory(
        name="长来源",
        city="呼和浩特",
        source="小程序商城春季新品会员专享活动直播间引流企业微信加粉门店扫码",
    )
    return clerk, contacts


def test_contact_list_keeps_short_columns_on_one_line(
    browser, live_server, store_with_tagged_contacts, tmp_path
):
    roles.roles_sync()
    operator = user_with_role(roles.OPERATOR, username="yunying")
    page = _log_in(browser, live_server, operator.username)

    page.goto(f"{live_server.url}/contacts/")
    page.screenshot(path=str(tmp_path / "contact-list-1280.png"), full_page=True)

    headers = [h.strip() for h in page.locator("#contact-table thead th").all_inner_texts()]
    rows = page.locator("#contact-table tbody tr")
    assert rows.count() == 7
    for row in rows.all():
        name = row.locator("td").nth(headers.index("姓名")).locator("a")
        assert line_count(name) == 1, name.inner_text()
        for column in ("城市", "来源", "生命周期阶段"):
            cell = row.locator("td").nth(headers.index(column))
            assert line_count(cell) == 1, (column, cell.inner_text())
    card = page.locator("#contact-table").bounding_box()
    assert card["x"] + card["width"] <= 1280
    table_wrap = page.locator("#contact-table .table-wrap")
    assert table_wrap.evaluate("el => el.scrollWidth <= el.clientWidth")  # no sideways scrolling
    page.close()


def test_store_staff_tag_form_fits_its_card(
    browser, live_server, store_with_tagged_contacts, tmp_path
):
    clerk, contacts = store_with_tagged_contacts
    page = _log_in(browser, live_server, clerk.username)

    page.goto(f"{live_server.url}/contacts/{contacts[0].pk}/")
    tags_card = page.locator("#contact-tags")
    tags_card.screenshot(path=str(tmp_path / "contact-tags-1280.png"))

    card = tags_card.bounding_box()
    select = tags_card.locator("select[name=tag]").bounding_box()
    button = tags_card.get_by_role("button", name="添加标签").bounding_box()
    expiry = tags_card.locator("input[name=expires_at]").bounding_box()
    right = card["x"] + card["width"]
    assert select["width"] >= 0.8 * (card["width"] - 40)  # the tag picker keeps a full row
    for box in (select, expiry, button):
        assert card["x"] < box["x"] and box["x"] + box["width"] < right
    assert expiry["width"] >= 150  # room for a date and a time
    page.close()

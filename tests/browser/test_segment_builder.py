"""A real browser builds, saves, explains and edits a segment with the rule builder (zh-Hans)."""

import re

import pytest

from contacts.models import ContactTag
from tests.factories import ContactFactory, EventFactory, TagFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def shoppers():
    """Five contacts: three in Shanghai (one VIP, one with a high lead score), two elsewhere."""
    vip = TagFactory(name="VIP")
    people = {
        "王芳": ContactFactory(name="王芳", city="上海", lead_score=10),
        "李娜": ContactFactory(name="李娜", city="上海", lead_score=80),
        "赵敏": ContactFactory(name="赵敏", city="上海", lead_score=5),
        "张伟": ContactFactory(name="张伟", city="北京", lead_score=90),
        "刘洋": ContactFactory(name="刘洋", city="杭州"),
    }
    for name in ("王芳", "张伟"):
        ContactTag.objects.create(contact=people[name], tag=vip)
    EventFactory(contact=people["刘洋"], name="purchase")
    return people


def _login(page, live_server, username: str) -> None:
    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", "pass-1234-word")
    page.locator("form button[type=submit], form input[type=submit]").first.click()
    page.wait_for_url(f"{live_server.url}/")


def test_build_save_explain_and_edit_a_segment(browser, live_server, tmp_path, shoppers):
    from playwright.sync_api import expect

    UserFactory(username="yunying")
    page = browser.new_page(locale="zh-CN", viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(15_000)
    expect.set_options(timeout=15_000)
    _login(page, live_server, "yunying")

    preview = page.locator("#rule-preview")

    def expect_count(n: int) -> None:
        # The debounced live count: "3 位客户当前符合".
        expect(preview.locator(".preview-count")).to_have_text(
            re.compile(rf"^\s*{n}\s*位客户当前符合\s*$")
        )

    def condition(path: str):
        return page.locator(f'.rule-condition[data-path="{path}"]')

    def operator_of(row):
        # The operator select (found by what it offers: its label's translation is in flux).
        return row.get_by_role("combobox").filter(has_text="至少为")

    def rows_settled() -> None:
        # The rows are busy (aria-busy) while the server re-renders them after a select changed.
        expect(page.locator("#rule-builder")).not_to_have_attribute("aria-busy", "true")

    def group(path: str):
        return page.locator(f'.rule-group[data-path="{path}"]')

    def add_condition_to(path: str) -> None:
        group(path).locator(":scope > .rule-group-actions").get_by_role(
            "button", name="+ 条件", exact=True
        ).click()

    # 1. A new segment with one condition: city equals 上海. ------------------------------------
    page.goto(f"{live_server.url}/segments/new/")
    expect(page.get_by_role("heading", name="新建分群")).to_be_visible()
    expect(page.get_by_text("没有条件：所有客户都符合。")).to_be_visible()
    expect_count(5)  # no condition yet: everyone
    page.get_by_label("名称").fill("上海的重点客户")

    add_condition_to("r")
    city = condition("r-0")
    expect(city.get_by_label("字段")).to_have_value("city")
    expect(city.get_by_role("combobox").filter(has_text="等于").first).to_have_value("eq")
    city.get_by_label("值").fill("上海")
    expect_count(3)
    samples = preview.locator(".preview-samples")
    for name in ("王芳", "李娜", "赵敏"):
        expect(samples.get_by_text(name)).to_be_visible()
    expect(samples.get_by_text("张伟")).to_have_count(0)

    # 2. A nested OR group with a tag condition; a second condition added, then removed. -----
    group("r").locator(":scope > .rule-group-actions").get_by_role(
        "button", name="+ 条件组", exact=True
    ).click()
    nested = group("r-1")
    expect(nested).to_be_visible()
    nested.get_by_label("条件组").select_option(label="满足以下任一条件")
    condition("r-1-0").get_by_label("条件类型").select_option(label="标签")
    tag_row = condition("r-1-0")
    tag_row.get_by_label("VIP").check()
    expect_count(1)  # 上海 and VIP: 王芳
    expect(samples.get_by_text("王芳")).to_be_visible()

    add_condition_to("r-1")
    score = condition("r-1-1")
    score.get_by_label("字段").select_option(label="线索评分")
    expect(operator_of(score)).to_have_value("eq")
    operator_of(score).select_option(label="至少为")
    rows_settled()
    expect(operator_of(score)).to_have_value("gte")
    score.get_by_label("值").fill("50")
    expect_count(2)  # 上海 and (VIP or lead score ≥ 50): 王芳, 李娜

    score.get_by_role("button", name="删除此条件").click()
    expect(condition("r-1-1")).to_have_count(0)
    expect_count(1)  # back to 上海 and VIP

    # 3. An empty number is refused on save, and the error is shown on that condition. ------
    add_condition_to("r-1")
    score = condition("r-1-1")
    score.get_by_label("字段").select_option(label="线索评分")
    operator_of(score).select_option(label="至少为")
    rows_settled()
    expect(operator_of(score)).to_have_value("gte")
    # The live preview gives no count, but does not mark a condition not filled in yet …
    expect(preview.get_by_role("status")).to_contain_text("规则尚未填写完整")
    expect(score.get_by_role("alert")).to_have_count(0)
    # … and saving is refused with the error next to the offending condition.
    page.get_by_role("button", name="创建分群").click()
    expect(page.locator(".alert-error").first).to_have_text("请修正下面的错误。")
    score = condition("r-1-1")
    expect(score.get_by_role("alert")).to_contain_text("须为数字")
    expect(condition("r-0").get_by_role("alert")).to_have_count(0)
    expect(condition("r-1-0").get_by_role("alert")).to_have_count(0)
    assert "/segments/new/" in page.url
    expect(page.get_by_label("名称")).to_have_value("上海的重点客户")
    page.screenshot(path=str(tmp_path / "builder-error.png"), full_page=True)

    score.get_by_label("值").fill("50")
    expect_count(2)
    expect(score.get_by_role("alert")).to_have_count(0)

    # 4. Save: the segment page shows the members. -------------------------------------------
    page.get_by_role("button", name="创建分群").click()
    page.wait_for_url(re.compile(r"/segments/\d+/$"))
    expect(page.get_by_role("heading", name="上海的重点客户")).to_be_visible()
    expect(page.get_by_text("分群“上海的重点客户”已创建，共 2 名成员。")).to_be_visible()
    summary = page.locator("#refresh-status")
    expect(summary.get_by_text("成员", exact=True).locator("xpath=..")).to_contain_text("2")
    members = page.locator("#segment-members tbody tr")
    expect(members).to_have_count(2)
    expect(members.filter(has_text="王芳")).to_have_count(1)
    expect(members.filter(has_text="李娜")).to_have_count(1)
    expect(members.filter(has_text="赵敏")).to_have_count(0)
    detail_url = page.url

    # 5. Why in or out: one member, one non-member. ----------------------------------------
    page.get_by_role("link", name="为何在/不在分群中？").click()
    page.wait_for_url(re.compile(r"/explain/"))
    explain = page.locator("#explain")

    def explain_lines(name: str) -> dict[str, str]:
        page.get_by_placeholder("姓名、手机号或客户 ID").fill(name)
        page.get_by_role("button", name="查看").click()
        expect(explain.get_by_role("heading", name=name)).to_be_visible()
        lines = explain.locator(".explain-lines li")
        expect(lines.first).to_be_visible()
        result = {}
        for line in lines.all():
            mark = line.locator(".explain-mark")
            result[line.inner_text().replace(mark.inner_text(), "", 1).strip()] = (
                mark.get_attribute("aria-label") or ""
            )
        return result

    wang = explain_lines("王芳")
    expect(explain.get_by_text("成员", exact=True)).to_be_visible()
    assert wang == {
        "满足以下全部条件": "成立",
        "城市 等于 上海": "成立",
        "满足以下任一条件": "成立",
        "标签包含任一：兴趣/VIP": "成立",
        "线索评分 至少为 50": "不成立",
    }, wang

    zhao = explain_lines("赵敏")
    expect(explain.get_by_text("不是成员", exact=True)).to_be_visible()
    assert zhao == {
        "满足以下全部条件": "不成立",
        "城市 等于 上海": "成立",
        "满足以下任一条件": "不成立",
        "标签包含任一：兴趣/VIP": "不成立",
        "线索评分 至少为 50": "不成立",
    }, zhao

    # 6. Edit: a lower score threshold lets 赵敏 in. ----------------------------------------
    page.goto(detail_url)
    page.get_by_role("link", name="编辑", exact=True).click()
    page.wait_for_url(re.compile(r"/edit/$"))
    expect_count(2)
    score = condition("r-1-1")
    expect(score.get_by_label("值")).to_have_value("50")
    score.get_by_label("值").fill("1")
    expect_count(3)
    page.get_by_role("button", name="保存", exact=True).click()
    page.wait_for_url(detail_url)
    expect(page.get_by_text("分群“上海的重点客户”已保存。")).to_be_visible()
    summary = page.locator("#refresh-status")
    expect(summary.get_by_text("成员", exact=True).locator("xpath=..")).to_contain_text("3")
    expect(page.locator("#segment-members tbody tr")).to_have_count(3)
    expect(page.locator("#segment-members").get_by_text("赵敏")).to_be_visible()
    expect(page.locator(".rule-lines")).to_contain_text("线索评分 至少为 1")

    page.screenshot(path=str(tmp_path / "segment-edited.png"), full_page=True)
    page.close()

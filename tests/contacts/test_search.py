"""The contact list's search box: names, phones spelled as phones, emails by their start."""

import pytest

from contacts.models import Contact
from contacts.selectors import contact_search
from tests.factories import ContactFactory

pytestmark = pytest.mark.django_db


def found(query: str) -> set[str]:
    return {c.name for c in contact_search(qs=Contact.objects.all(), query=query)}


@pytest.fixture
def people():
    ContactFactory(name="李芳", phone="+8613000010999", email="fang.li@example.cn")
    ContactFactory(name="用户10999", phone="+8613900000001", email="imp5@example.cn")
    ContactFactory(name="王伟", phone="+8613700000002", email="")


def test_digits_inside_a_name_query_do_not_match_phones(people):
    assert found("用户10999") == {"用户10999"}


@pytest.mark.parametrize("query", ["10999", "130 0001 0999", "+86 130-0001-0999", "(130)00010999"])
def test_a_query_spelled_as_a_phone_matches_phones(people, query):
    assert "李芳" in found(query)


@pytest.mark.parametrize("query", ["imp5", "imp5@", "IMP5@EXAMPLE", "imp5@example.cn"])
def test_emails_match_by_their_beginning(people, query):
    assert found(query) == {"用户10999"}


def test_names_still_match_anywhere(people):
    assert found("伟") == {"王伟"}
    assert found("fang.li") == {"李芳"}

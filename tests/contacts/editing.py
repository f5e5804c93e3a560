"""What the contact edit-form tests share: the form as the browser posts it unchanged."""

from contacts.models import Contact


def edit_form_data(contact: Contact, **changes) -> dict:
    """The edit form's fields for `contact` as shown (no birthday, owner or store chosen),
    with `changes` applied."""
    data = {
        "name": contact.name,
        "nickname": contact.nickname,
        "gender": contact.gender,
        "birthday": "",
        "phone": contact.phone,
        "email": contact.email,
        "province": contact.province,
        "city": contact.city,
        "lifecycle_stage": contact.lifecycle_stage_id,
        "owner": "",
        "store": "",
    }
    data.update(changes)
    return data

from django import forms
from django.utils.translation import gettext_lazy as _

from contacts.models import Contact
from contacts.selectors import tags_grouped


class TagAddForm(forms.Form):
    """Pick one tag to add; rendered without the tags the contact already has."""

    tag = forms.ModelChoiceField(
        label=_("Tag"), queryset=tags_grouped(), empty_label=_("Choose a tag…")
    )

    def __init__(self, *args, contact: Contact | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if contact is not None:
            self.fields["tag"].queryset = tags_grouped().exclude(contact_tags__contact=contact)

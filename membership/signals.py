from django.dispatch import Signal

# Sent inside the writing transaction when members' points, growth value, tier or membership
# itself changed; kwargs: contact_ids (list[int]). Segments queue these contacts for the
# re-evaluation of rules on membership.
membership_changed = Signal()

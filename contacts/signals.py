from django.dispatch import Signal

# Sent after commit when contacts' tags or attributes changed; kwargs: contact_ids (list[int]).
contact_changed = Signal()

# Sent inside the recording transaction; kwargs: events (list[Event]) that were newly stored.
# Receivers that write (points, scores) therefore commit or roll back together with the events.
events_recorded = Signal()

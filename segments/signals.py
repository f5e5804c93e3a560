from django.dispatch import Signal

# Sent inside the refresh transaction; kwargs: segment, contact_ids (list[int]).
segment_entered = Signal()
segment_exited = Signal()

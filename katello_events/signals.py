"""Signals katello_events sends, for applications to hook their own notifications.

Both are sent from the runner's control thread (``send_robust``: a receiver that raises is
logged, never breaks the runner), once per crossing, with ``sender=None`` and keyword arguments
``handler`` (the slot name), ``depth`` and ``threshold``. Keep receivers quick: they run between
heartbeats.
"""

from django.dispatch import Signal

#: The handler's queue got deeper than its ``QUEUE_DEPTH_WARNING`` threshold.
queue_depth_exceeded = Signal()

#: The handler's queue is back to 80 % of its threshold or less.
queue_depth_recovered = Signal()

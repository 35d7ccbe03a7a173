"""Settings of the server the browser test starts: the test settings, plus an audience for details.

``KATELLO_EVENTS_DETAILS_VISIBLE_TO`` lets the test show the staff columns to a browser that
cannot sign in from the command line (headless Chromium takes no cookies as arguments).
"""

import os

from tests.settings import *  # noqa: F403
from tests.settings import KATELLO_EVENTS

KATELLO_EVENTS = {
    **KATELLO_EVENTS,
    "DETAILS_VISIBLE_TO": os.environ.get("KATELLO_EVENTS_DETAILS_VISIBLE_TO", "staff"),
}

"""Status rows: written by the runner (``store``), read and judged by everyone else (``report``);
``snapshot`` is the unit the runner writes them from, ``depth_warnings`` the queue-depth alarms."""

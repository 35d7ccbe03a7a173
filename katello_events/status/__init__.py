"""Status rows: written by the runner (``store``), read and judged by everyone else (``report``)."""

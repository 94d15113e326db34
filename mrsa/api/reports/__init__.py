"""``/v1/reports``: the sweep reports of the run folders under ``MRSA_REPORTS_DIR`` (see :mod:`mrsa.api`)."""

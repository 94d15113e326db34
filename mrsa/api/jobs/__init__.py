"""``/v1/jobs``: submit, follow, read and cancel Markovian RSA jobs (see :mod:`mrsa.api`)."""

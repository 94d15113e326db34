"""Helpers several test modules share (builders, polling); fakes are in :mod:`tests.fakes`, the
process and server harnesses in :mod:`testkit`, fixtures in :mod:`tests.plugins`."""

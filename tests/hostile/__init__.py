"""Probes of hostile backends and answers: servers that stall, lie or go away (issue 9)."""

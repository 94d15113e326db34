"""``mrsa serve`` without API keys: a warning on loopback, a refusal elsewhere unless allowed."""

from __future__ import annotations

import logging

import pytest
import typer
from typer.testing import CliRunner

from mrsa.cli import app
from mrsa.cli.serve_cmd import check_auth, is_loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("127.0.0.2", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.4", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_no_keys_on_loopback_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mrsa.api"):
        check_auth("127.0.0.1", [], allow_no_auth=False)
    assert any("authentication is OFF" in r.getMessage() for r in caplog.records)
    caplog.clear()
    check_auth("0.0.0.0", ["k"], allow_no_auth=False)  # keys: nothing to say
    assert not caplog.records


def test_no_keys_on_another_interface_is_refused_unless_allowed(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(typer.Exit) as exc:
        check_auth("0.0.0.0", [], allow_no_auth=False)
    assert exc.value.exit_code == 2
    with caplog.at_level(logging.WARNING, logger="mrsa.api"):
        check_auth("0.0.0.0", [], allow_no_auth=True)
    assert any("authentication is OFF" in r.getMessage() for r in caplog.records)


def test_the_cli_refuses_before_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MRSA_API_KEYS", raising=False)
    monkeypatch.delenv("MRSA_ALLOW_NO_AUTH", raising=False)
    from mrsa.cli.settings import get_settings

    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--redis", "redis://127.0.0.1:9/0"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "no API keys are set" in text and "--allow-no-auth" in text and "Traceback" not in text
    get_settings.cache_clear()


def test_the_env_twin_allows_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """MRSA_ALLOW_NO_AUTH=1 lets serve go on (it then fails on the unreachable Redis, not on auth)."""
    monkeypatch.delenv("MRSA_API_KEYS", raising=False)
    monkeypatch.setenv("MRSA_ALLOW_NO_AUTH", "1")
    from mrsa.cli.settings import get_settings

    get_settings.cache_clear()
    seen: list[str] = []
    monkeypatch.setattr("mrsa.api.server.run_server", lambda app, **kw: seen.append(kw["host"]) or True)
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--redis", "redis://127.0.0.1:9/0"])
    assert result.exit_code == 0, result.output
    assert seen == ["0.0.0.0"]
    get_settings.cache_clear()

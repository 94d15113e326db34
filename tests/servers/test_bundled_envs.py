"""The bundled servers' private environments: keyed by their pins, built once, errors with the log."""

from __future__ import annotations

from pathlib import Path

import pytest

from mrsa.servers.bundled_envs import BundledEnvError, EnvSpec, cache_root, ensure_env, env_python


def test_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MRSA_CACHE_DIR", str(tmp_path / "explicit"))
    assert cache_root() == tmp_path / "explicit"
    monkeypatch.delenv("MRSA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "mrsa"


def test_a_change_of_pins_is_a_new_folder() -> None:
    a = EnvSpec("srv", (("pkg==1",),))
    b = EnvSpec("srv", (("pkg==2",),))
    assert a.path() != b.path()
    assert a.path() == EnvSpec("srv", (("pkg==1",),)).path()
    assert a.path().name.startswith("srv-")


def test_builds_once_and_reuses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MRSA_CACHE_DIR", str(tmp_path))
    heard: list[str] = []
    env = ensure_env(EnvSpec("empty", ()), progress=heard.append)
    assert env_python(env).exists()
    assert (env / ".ready").exists()
    assert any("ready" in line for line in heard)
    heard.clear()
    assert ensure_env(EnvSpec("empty", ()), progress=heard.append) == env
    assert heard == []  # nothing rebuilt


def test_a_failing_step_names_the_log_and_leaves_no_ready_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MRSA_CACHE_DIR", str(tmp_path))
    spec = EnvSpec("broken", ((str(tmp_path / "no-such-project"),),))
    with pytest.raises(BundledEnvError) as caught:
        ensure_env(spec)
    assert "no-such-project" in str(caught.value)
    assert not (spec.path() / ".ready").exists()


def test_the_build_environment_is_part_of_the_key() -> None:
    plain = EnvSpec("srv", (("pkg==1",),))
    flags = EnvSpec("srv", (("pkg==1",),), environment=(("CMAKE_ARGS", "-DGGML_NATIVE=OFF"),))
    other = EnvSpec("srv", (("pkg==1",),), environment=(("CMAKE_ARGS", "-DGGML_NATIVE=ON"),))
    assert len({plain.path(), flags.path(), other.path()}) == 3

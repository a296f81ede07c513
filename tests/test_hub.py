"""One definition of "may the Hub be used?" (im_pipeline/hub.py)."""

from __future__ import annotations

import socket

import pytest

from im_pipeline import hub


@pytest.mark.parametrize("var", hub.OFFLINE_VARIABLES)
@pytest.mark.parametrize(("value", "offline"), [("1", True), ("TRUE", True), (" on ", True), ("0", False), ("", False)])
def test_offline_variables(monkeypatch, var: str, value: str, offline: bool) -> None:
    for v in hub.OFFLINE_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv(var, value)
    assert hub.hub_offline() is offline
    assert hub.offline_state() == (f"offline ({var}=1)" if offline else "unreachable from this machine")


def test_offline_never_touches_the_network(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("no connection may be attempted offline")

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert hub.hub_reachable() is False


def test_unreachable_is_false(monkeypatch) -> None:
    for v in hub.OFFLINE_VARIABLES:
        monkeypatch.delenv(v, raising=False)

    def fail(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", fail)
    assert hub.hub_reachable() is False

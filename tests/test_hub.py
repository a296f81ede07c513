"""One definition of "may the Hub be used?" (im_pipeline/hub.py), with each library's own switches."""

from __future__ import annotations

import socket

import pytest

from im_pipeline import hub


@pytest.fixture
def online(monkeypatch):
    for v in hub.OFFLINE_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    return monkeypatch


@pytest.mark.parametrize(("value", "offline"), [("1", True), ("TRUE", True), (" on ", True), ("0", False), ("", False)])
def test_true_values(online, value: str, offline: bool) -> None:
    online.setenv("HF_HUB_OFFLINE", value)
    assert hub.hub_offline() is offline
    assert hub.offline_state() == ("offline (HF_HUB_OFFLINE=1)" if offline else "unreachable from this machine")


@pytest.mark.parametrize(
    ("var", "hub_files", "datasets", "models"),
    [
        ("HF_HUB_OFFLINE", True, True, True),
        ("HF_DATASETS_OFFLINE", False, True, False),
        ("TRANSFORMERS_OFFLINE", False, False, True),
    ],
)
def test_each_library_reads_its_own_switches(online, var: str, hub_files: bool, datasets: bool, models: bool) -> None:
    online.setenv(var, "1")
    assert (hub.hub_offline(), hub.hub_offline(hub.DATASETS), hub.hub_offline(hub.MODELS)) == (
        hub_files,
        datasets,
        models,
    )
    if datasets:
        assert hub.offline_state(hub.DATASETS) == f"offline ({var}=1)"


def test_offline_never_touches_the_network(online) -> None:
    online.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("no connection may be attempted offline")

    online.setattr(socket, "create_connection", refuse)
    assert hub.hub_reachable() is False
    assert hub.hub_reachable(variables=hub.DATASETS) is False


def test_unreachable_is_false(online) -> None:
    def fail(*args, **kwargs):
        raise OSError("network is unreachable")

    online.setattr(socket, "create_connection", fail)
    assert hub.hub_reachable() is False

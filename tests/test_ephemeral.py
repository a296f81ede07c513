"""The ephemeral-server override repeats a private Prefect method: used only on the Prefect it was verified on."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("prefect")


def test_the_installed_prefect_is_the_one_the_override_was_verified_on() -> None:
    """Fails when Prefect changes (another version, or another source of the repeated method): compare
    ``BoundEphemeralServer._run_uvicorn_command`` with Prefect's new one, then record the new version and hash."""
    import prefect

    from im_pipeline_flows import ephemeral

    assert prefect.__version__ in ephemeral.VERIFIED, f"Prefect {prefect.__version__} is not verified"
    assert ephemeral.source_hash() == ephemeral.VERIFIED[prefect.__version__]
    assert ephemeral.verified()


def test_an_unverified_prefect_falls_back_to_its_own_server(monkeypatch, caplog) -> None:
    from im_pipeline_flows import ephemeral

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(ephemeral, "VERIFIED", {"0.0.0": "x"})
    started = []
    monkeypatch.setattr(ephemeral.BoundEphemeralServer, "start", lambda self: started.append(self))
    with caplog.at_level(logging.WARNING, logger=ephemeral.__name__):
        assert ephemeral.start_bound_ephemeral_server() is None
    assert started == []
    assert "not a version the ephemeral-server override was verified on (0.0.0)" in caplog.text

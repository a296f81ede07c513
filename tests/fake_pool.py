"""A stand-in for the Prefect calls ``im_pipeline_flows.pool.run_units_on_pool`` makes (the unit deployment,
``run_deployment``, the sync client's ``read_flow_run``), for tests of its submit-and-watch logic without a server."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest


def fake_pool(
    monkeypatch: pytest.MonkeyPatch,
    submit: Callable[[str, dict[str, Any], str], Any],
    on_deploy: Callable[[str], None] = lambda pool: None,
    on_read: Callable[[], None] = lambda: None,
) -> None:
    """Patch the pool module's Prefect calls. ``submit(deployment, parameters, flow_run_name)`` is called for each
    flow run started and returns the state that run is then read with; the deployment is ``im-unit/units-<pool>``,
    and ``on_deploy(pool)`` is told each time it is ensured; ``on_read()`` each time a run's state is read."""
    import prefect.client.orchestration
    import prefect.deployments

    from im_pipeline_flows import pool as pool_module

    states: dict[uuid.UUID, Any] = {}

    def ensure(cfg: Any, pool: str) -> str:
        on_deploy(pool)
        return f"im-unit/units-{pool}"

    def run_deployment(name: str, parameters: dict, timeout: int, flow_run_name: str, tags: list[str]) -> Any:
        assert timeout == 0  # submitted, not waited for
        run_id = uuid.uuid4()
        states[run_id] = submit(name, parameters, flow_run_name)
        return SimpleNamespace(id=run_id)

    class Client:
        def __enter__(self) -> Client:
            return self

        def __exit__(self, *exc: object) -> bool:
            return False

        def read_flow_run(self, run_id: uuid.UUID) -> Any:
            on_read()
            return SimpleNamespace(id=run_id, state=states[run_id])

    monkeypatch.setattr(pool_module, "ensure_unit_deployment", ensure)
    monkeypatch.setattr(prefect.deployments, "run_deployment", run_deployment)
    monkeypatch.setattr(prefect.client.orchestration, "get_client", lambda sync_client: Client())

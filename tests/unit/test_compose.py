"""docker-compose.yml cannot run here; keep it parseable and self-consistent."""

from __future__ import annotations

import yaml

from pipeline import ROOT


def test_compose_declares_the_stack_and_its_files_exist() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "timescaledb", "vigil-worker", "grafana"} <= set(services)
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:")
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    worker_env = services["vigil-worker"]["environment"]
    assert worker_env["VIGIL_KAFKA_BOOTSTRAP"].split(":")[0] == "kafka"
    assert "@timescaledb:" in worker_env["VIGIL_DATABASE_URL"]
    assert (ROOT / "Dockerfile").is_file()
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and source != "./config":
                assert (ROOT / source).exists(), f"{source} is mounted but missing"

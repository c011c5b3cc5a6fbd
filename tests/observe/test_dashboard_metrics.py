"""Every metric the Grafana dashboard and the alert rules name is one the service exports."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from dataaccess.v1 import data_access_pb2 as pb
from tests.conftest import RedisProcess, free_port, row, started

OBSERVABILITY = Path(__file__).parents[2] / "k8s" / "components" / "observability"
NAME = re.compile(r"\b((?:grpc_server|dataaccess)_[a-z0-9_]+)")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def _family(name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads((OBSERVABILITY / "dashboard.json").read_text())
    found = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    found += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return found


def _rule_expressions() -> list[str]:
    rules = yaml.safe_load((OBSERVABILITY / "alerts.yaml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def _named(expressions: list[str]) -> set[str]:
    return {_family(name) for expr in expressions for name in NAME.findall(expr)}


def _exported(text: str) -> set[str]:
    """The metric names in a scrape, histogram series under their family's name."""
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1].isalpha()}
    return {_family(name) for name in names}


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


def test_the_dashboard_and_rules_name_what_they_should() -> None:
    dashboard, rules = _named(_dashboard_expressions()), _named(_rule_expressions())
    for wanted in (
        "grpc_server_handled_total",
        "grpc_server_handling_seconds",
        "dataaccess_cache_hits_total",
        "dataaccess_pool_waiters",
        "dataaccess_redis_breaker_open",
        "dataaccess_replication_lag_seconds",
    ):
        assert wanted in dashboard and wanted in rules, wanted
    assert {"dataaccess_write_queue_depth", "dataaccess_write_transactions_total"} <= dashboard


async def test_every_metric_named_is_in_a_scrape(
    tmp_path: Path, document: dict[str, Any], redis_server: RedisProcess, postgres_url: str
) -> None:
    named = _named(_dashboard_expressions()) | _named(_rule_expressions())
    document["metrics_listen"] = f"127.0.0.1:{free_port()}"
    document["redis_url"] = redis_server.url
    document["databases"].append({"name": "ledger", "url": postgres_url})
    async with started(tmp_path, document) as running:
        query = pb.QueryRequest(database="kitchen", sql="SELECT count(*) FROM items")
        await running.stub.Query(query)  # a miss: the database runs it
        await running.stub.Query(query)  # a hit
        await running.stub.BatchInsert(
            pb.BatchInsertRequest(database="kitchen", table="items", columns=["qty"], rows=[row(1)])
        )
        await running.stub.Health(pb.HealthRequest())  # PostgreSQL's probe reads its lag
        text = await asyncio.to_thread(_scrape, running.server.metrics_port)
    missing = named - _exported(text)
    assert not missing, f"named but not exported: {sorted(missing)}"

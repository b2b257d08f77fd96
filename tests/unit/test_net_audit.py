"""The audit log: a fixed shape, bounded."""

import pytest

from shuru.net.audit import AuditLog


def test_events_have_the_contract_shape():
    log = AuditLog()
    entry = log.record("inject", "api.io", "198.18.0.1", 443, secrets=["GH"], reason=None)
    assert set(entry) == {"time", "event", "host", "ip", "port", "secrets"}
    assert log.events == [entry]


def test_unknown_events_and_fields_are_bugs():
    log = AuditLog()
    with pytest.raises(ValueError):
        log.record("peek", None, "", 0)
    with pytest.raises(ValueError):
        log.record("inject", None, "", 0, value="x")


def test_the_log_is_bounded_and_counts_what_it_dropped():
    log = AuditLog(max_events=100)
    for i in range(250):
        log.record("dns", f"h{i}.io", "198.18.0.1", 53)
    assert len(log.events) <= 100 and log.dropped + len(log.events) == 250
    assert log.events[-1]["host"] == "h249.io"

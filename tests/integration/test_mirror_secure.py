"""MirrorMaker 2 from a secured primary (SASL_SSL, SCRAM, ACLs enforced): it logs in as its own principal,
whose declared rights are read-only, and still copies every record to the backup.

A module of its own so its three JVMs never run beside test_mirror.py's."""

# ruff: noqa: F811  (the fixture imported from fixtures_mirror is a parameter here)

from __future__ import annotations

import stat

import pytest

from millrace.kafka.acls import MIRROR, current_acls
from millrace.kafka.admin import admin_client
from millrace.runtime import mirror
from tests.integration.fixtures_mirror import MirrorStack, secure_mirror_stack  # noqa: F401  (fixture)
from tests.integration.test_mirror import LAG_BOUND_S, contents, produce, records, wait_lag_zero

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_mirrormaker_reads_a_secured_primary_as_its_own_principal(secure_mirror_stack: MirrorStack) -> None:
    ms, topic = secure_mirror_stack, secure_mirror_stack.topics["secure"]
    admin_conf = ms.stack.admin_config()
    assert admin_conf["security.protocol"] == "SASL_SSL"
    props = mirror.mirror_home(ms.settings.state_dir) / "mm2.properties"
    text = props.read_text(encoding="utf-8")
    assert f'username="{MIRROR}"' in text and "primary.security.protocol = SASL_SSL" in text
    assert stat.S_IMODE(props.stat().st_mode) == 0o600  # it holds MirrorMaker's password
    mine = {(a.resource, a.name, a.operation) for a in current_acls(admin_client(admin_conf)) if a.principal == MIRROR}
    assert ("TOPIC", topic, "READ") in mine
    assert not {op for _r, _n, op in mine} & {"WRITE", "CREATE", "ALTER", "DELETE", "ALL"}

    assert produce(admin_conf, topic, records("secure", 300)) == 300
    _report, took = wait_lag_zero(ms, topic)
    assert took < LAG_BOUND_S
    on_primary = contents(admin_conf, topic)
    assert len(on_primary) == 300
    assert contents(mirror.backup_config(ms.settings), topic) == on_primary

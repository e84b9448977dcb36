"""Security material of a local secure Kafka cluster: a CA, per-node certificates and SCRAM credentials.

Everything lives under ``<state_dir>/kafka/security`` and is made once, then reused (a restart keeps the
same CA, certificates and passwords, so clients configured against the cluster keep working)::

    ca.pem, ca.key             the local certificate authority (key: owner-only)
    node-<id>.pem              the node's PEM keystore: private key, certificate, CA (owner-only)
    credentials.json           principal -> password, for every principal of the cluster (owner-only)
    clients/<principal>.env    MILLRACE_KAFKA__* settings for a client acting as that principal (owner-only)

Certificates are made with the OS's ``openssl`` (the JDK's keytool cannot sign with a CA of its own); Kafka
reads PEM keystores and truststores directly, librdkafka reads the CA file.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pydantic import SecretStr

from millrace.config import KafkaSettings
from millrace.errors import MillraceError
from millrace.kafka.acls import INTERNAL_PRINCIPAL, SUPER_USERS, all_principals
from millrace.runtime.tools import require

log = logging.getLogger(__name__)

CERT_DAYS = 825
SCRAM_MECHANISM: Final = "SCRAM-SHA-512"


@dataclass(frozen=True)
class ClusterSecurity:
    """Where one cluster's security material is, and its principals' passwords (never logged)."""

    home: Path
    passwords: Mapping[str, SecretStr]

    @property
    def ca_file(self) -> Path:
        return self.home / "ca.pem"

    def keystore(self, node_id: int) -> Path:
        return self.home / f"node-{node_id}.pem"

    def password(self, principal: str) -> str:
        try:
            return self.passwords[principal].get_secret_value()
        except KeyError:
            raise MillraceError(f"no credentials for principal {principal!r} in {self.home}") from None

    def client_settings(self, principal: str, bootstrap_servers: str, **extra: object) -> KafkaSettings:
        """The Kafka client settings of ``principal`` on this cluster (SASL_SSL, SCRAM-SHA-512, the CA)."""
        return KafkaSettings(
            bootstrap_servers=bootstrap_servers,
            security_protocol="SASL_SSL",
            sasl_mechanism=SCRAM_MECHANISM,
            sasl_username=principal,
            sasl_password=SecretStr(self.password(principal)),
            ssl_cafile=self.ca_file,
            **extra,  # type: ignore[arg-type]
        )


def security_dir(state_dir: Path) -> Path:
    return state_dir / "kafka" / "security"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read, never readable by others even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(path, 0o600)  # an older file keeps its mode through O_TRUNC


def _openssl(*args: str) -> None:
    result = subprocess.run([require("openssl", "to make the local CA"), *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise MillraceError(f"openssl {args[0]} failed: {(result.stderr or result.stdout).strip()[-500:]}")


def ensure_ca(home: Path) -> None:
    if (home / "ca.pem").is_file() and (home / "ca.key").is_file():
        return
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    key = home / "ca.key"
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
    os.chmod(key, 0o600)
    _openssl(
        "req", "-x509", "-new", "-key", str(key), "-out", str(home / "ca.pem"), "-days", str(CERT_DAYS),
        "-subj", "/CN=millrace local CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip


def ensure_node_cert(home: Path, node_id: int, hosts: Iterable[str]) -> Path:
    """The node's PEM keystore (key + certificate + CA), signed by the local CA, SAN = ``hosts``."""
    keystore = home / f"node-{node_id}.pem"
    if keystore.is_file():
        return keystore
    ensure_ca(home)
    names = sorted(set(hosts) | {"localhost", "127.0.0.1"})
    san = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in names)
    with tempfile.TemporaryDirectory(dir=home) as tmp:
        work = Path(tmp)
        key, csr, crt, ext = work / "node.key", work / "node.csr", work / "node.crt", work / "ext.cnf"
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
        _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/CN=millrace-kafka-{node_id}")
        ext.write_text(
            f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\n",
            encoding="utf-8",
        )
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(home / "ca.pem"), "-CAkey", str(home / "ca.key"),
            "-set_serial", str(secrets.randbits(63)), "-days", str(CERT_DAYS), "-extfile", str(ext), "-out", str(crt),
        )  # fmt: skip
        # Kafka's PEM keystore wants an unencrypted PKCS#8 key ("BEGIN PRIVATE KEY") followed by the chain.
        pkcs8 = work / "node.p8"
        _openssl("pkcs8", "-topk8", "-nocrypt", "-in", str(key), "-out", str(pkcs8))
        parts = (pkcs8, crt, home / "ca.pem")
        _write_private(keystore, "".join(p.read_text(encoding="utf-8") for p in parts))
    return keystore


def ensure_credentials(home: Path, principals: Iterable[str]) -> dict[str, SecretStr]:
    """Passwords of ``principals``: kept from an earlier run, generated (random, 32 bytes) for new ones."""
    path = home / "credentials.json"
    known: dict[str, str] = {}
    if path.is_file():
        known = json.loads(path.read_text(encoding="utf-8"))
    wanted = [p for p in principals if p not in known]
    if wanted:
        known.update({p: secrets.token_urlsafe(32) for p in wanted})
        _write_private(path, json.dumps(known, indent=2, sort_keys=True))
    return {p: SecretStr(pw) for p, pw in known.items()}


def client_env(settings: KafkaSettings) -> str:
    """``MILLRACE_KAFKA__*`` lines equivalent to ``settings`` (for ``set -a; . file; set +a``)."""
    values = {
        "BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "SECURITY_PROTOCOL": settings.security_protocol,
        "SASL_MECHANISM": settings.sasl_mechanism or "",
        "SASL_USERNAME": settings.sasl_username or "",
        "SASL_PASSWORD": settings.sasl_password.get_secret_value() if settings.sasl_password else "",
        "SSL_CAFILE": str(settings.ssl_cafile.resolve()) if settings.ssl_cafile else "",
    }
    return "".join(f"MILLRACE_KAFKA__{key}={value}\n" for key, value in values.items() if value)


def ensure_security(state_dir: Path, node_ids: Iterable[int], hosts: Iterable[str]) -> ClusterSecurity:
    """Make (once) the CA, a certificate per node and a password per principal; return where they are."""
    home = security_dir(state_dir)
    hosts = list(hosts)
    ensure_ca(home)
    for node_id in node_ids:
        ensure_node_cert(home, node_id, hosts)
    passwords = ensure_credentials(home, [*all_principals(), INTERNAL_PRINCIPAL])
    return ClusterSecurity(home=home, passwords=passwords)


def load_security(state_dir: Path) -> ClusterSecurity | None:
    """The security material of the cluster under ``state_dir``, if it was made."""
    home = security_dir(state_dir)
    path = home / "credentials.json"
    if not path.is_file():
        return None
    known = json.loads(path.read_text(encoding="utf-8"))
    return ClusterSecurity(home=home, passwords={p: SecretStr(pw) for p, pw in known.items()})


def write_client_envs(security: ClusterSecurity, bootstrap_servers: str) -> Path:
    """One env file per client principal under ``clients/``; returns that directory."""
    out = security.home / "clients"
    for principal in all_principals():
        if principal in SUPER_USERS and principal != "admin":
            continue
        _write_private(out / f"{principal}.env", client_env(security.client_settings(principal, bootstrap_servers)))
    return out

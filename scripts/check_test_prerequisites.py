"""What `make test` needs beyond the virtual environment, checked before pytest starts, so that a
missing service is named with how to get it, not found deep inside a test.

python scripts/check_test_prerequisites.py   (exit 1, one line per missing thing, when any is)
"""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.services import POSTGRES_DSN, REDIS_HOST, REDIS_PORT

CI_RUN = "`bash .ci/run` starts both on a machine that has them installed"


def redis_answers() -> bool:
    """A PING over a plain socket: the check needs nothing but the standard library here."""
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=3) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def postgres_answers() -> str | None:
    """None when the tests' database accepts the tests' user, else why not."""
    import psycopg  # in the dev environment that `make test` installs first

    try:
        with psycopg.connect(POSTGRES_DSN, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return " ".join(str(exc).split())[:200]


def nats_jetstream_answers(host: str = "127.0.0.1", port: int = 4222) -> bool:
    """A NATS server greets with an INFO line that says whether JetStream is on."""
    try:
        with socket.create_connection((host, port), timeout=3) as connection:
            greeting = connection.recv(4096)
    except OSError:
        return False
    return greeting.startswith(b"INFO") and b'"jetstream":true' in greeting


def rabbitmq_answers(host: str = "127.0.0.1", port: int = 5672) -> bool:
    """An AMQP 0-9-1 server answers the protocol header with a Connection.Start frame."""
    try:
        with socket.create_connection((host, port), timeout=3) as connection:
            connection.sendall(b"AMQP\x00\x00\x09\x01")
            return connection.recv(8)[:1] == b"\x01"
    except OSError:
        return False


def missing() -> list[str]:
    problems = []
    if not nats_jetstream_answers():
        problems.append(
            "NATS with JetStream does not answer at 127.0.0.1:4222: tests/test_streaming.py "
            "consumes from it (`nats-server -js`; Debian: apt-get install nats-server)"
        )
    if not rabbitmq_answers():
        problems.append(
            "RabbitMQ does not answer at 127.0.0.1:5672 (user guest/guest): "
            "tests/test_streaming.py consumes from it (Debian: apt-get install rabbitmq-server)"
        )
    if not redis_answers():
        problems.append(
            f"Redis does not answer at {REDIS_HOST}:{REDIS_PORT}: start one, e.g. "
            "`redis-server --daemonize yes --port 6379 --save '' --appendonly no` "
            f"(Debian: apt-get install redis-server); {CI_RUN}"
        )
    if shutil.which("redis-server") is None:
        problems.append(
            "redis-server is not on the PATH: tests/chaos starts Redis servers of its own "
            "(Debian: apt-get install redis-server)"
        )
    postgres = postgres_answers()
    if postgres is not None:
        problems.append(
            f"PostgreSQL refuses {POSTGRES_DSN} ({postgres}): the tests need database 'test', "
            "user 'postgres' without a password on 127.0.0.1:5432 (Debian: apt-get install "
            "postgresql; pg_ctlcluster <version> main start; createdb -U postgres test; "
            f"'host all all 127.0.0.1/32 trust' in pg_hba.conf); {CI_RUN}"
        )
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        problems.append(
            "Chromium is not on the PATH: the monitoring report test opens the report in it "
            "(Debian: apt-get install chromium)"
        )
    if shutil.which("promtool") is None:
        problems.append(
            "promtool is not on the PATH: tests/test_deploy.py checks the alert rules, their "
            "unit tests and the dashboard's queries with it (Debian: apt-get install prometheus)"
        )
    return problems


def main() -> int:
    problems = missing()
    for problem in problems:
        print(f"missing for `make test`: {problem}", file=sys.stderr)
    if problems:
        print("(`make test-unit` needs none of these)", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

import pytest

from aether_site.redaction import redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://aether:hunter2@db:5432/aether", "postgres://aether:***@db:5432/aether"),
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
        ("redis://cache:6379/0?password=hunter2&db=1", "redis://cache:6379/0?password=***&db=1"),
        ("postgres://aether@db/aether?sslmode=require", "postgres://aether@db/aether?sslmode=require"),
        ("postgres://aether:pa#hunter2@db/aether", "postgres://***"),
        ("sqlite:////srv/aether.sqlite3", "sqlite:////srv/aether.sqlite3"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected
    assert "hunter2" not in redact_url(url)

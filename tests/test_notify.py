"""migration_notify against real receivers on loopback: a webhook server and an SMTP server."""
from __future__ import annotations

import subprocess

import pytest
from conftest import run_module
from receivers import SmtpReceiver, WebhookReceiver
from validate_helpers import free_port

DB_PASSWORD = "db-Pa55w0rd-xyz"
TOKEN = "B0T-hook-T0KEN-123"


def notify_args(**extra) -> dict:
    return {"event": "failed", "version": "2.0.0", "run_id": 7, "environment": "staging",
            "title": "Model accuracy tracking",
            "summary": {"failed phase": "data",
                        "error": f"could not connect: password={DB_PASSWORD} host=db "
                                 f"postgresql://football:{DB_PASSWORD}@db/fp",
                        "records migrated": 1234},
            "redact": [DB_PASSWORD], **extra}


def test_webhook_and_mail_reach_real_receivers_without_secrets(tmp_path):
    with WebhookReceiver() as hook, SmtpReceiver() as smtp:
        url = hook.url(f"/services/{TOKEN}")
        res = run_module("migration_notify", notify_args(
            webhook_url=url, email_to=["dba@example.com", "lead@example.com"], smtp_host="127.0.0.1",
            smtp_port=smtp.port, smtp_security="plain", summary={**notify_args()["summary"], "webhook": url}), tmp_path)
        assert res.get("failed") is not True, res.get("msg")
        assert res["changed"] is True and res["delivered"] == {"webhook": True, "email": True}
        assert len(hook.posts) == 1 and len(smtp.mails) == 1
        post, mail = hook.posts[0], smtp.mails[0]
    assert post["path"] == f"/services/{TOKEN}"
    body = post["json"]
    assert body["text"].startswith(":x: [pgmigrate-ops] staging: migration to 2.0.0 failed (run #7)")
    fields = {f["title"]: f["value"] for f in body["attachments"][0]["fields"]}
    assert fields["records migrated"] == "1234" and fields["failed phase"] == "data"
    assert mail["to"] == ["dba@example.com", "lead@example.com"]
    assert "Subject: [pgmigrate-ops] staging: migration to 2.0.0 failed (run #7)" in mail["data"]
    for text in (post["raw"], mail["data"], mail["raw"], res["_output"]):
        assert DB_PASSWORD not in text and TOKEN not in text
    assert "password=***" in post["raw"] and "football:***@db" in mail["data"]
    assert f"http://127.0.0.1:{hook.port}/***" in post["raw"]


def test_unreachable_receivers_are_warnings_not_failures(tmp_path):
    dead = free_port()
    res = run_module("migration_notify", notify_args(
        webhook_url=f"http://127.0.0.1:{dead}/hooks/{TOKEN}", email_to=["dba@example.com"],
        smtp_host="127.0.0.1", smtp_port=free_port(), smtp_security="plain", timeout=2), tmp_path)
    assert res.get("failed") is not True
    assert res["delivered"] == {"webhook": False, "email": False} and res["changed"] is False
    warnings = " ".join(res.get("warnings", []))
    assert "webhook did not take the failed notification" in warnings and "the migration goes on" in warnings
    assert "mail to dba@example.com was not sent" in warnings
    assert TOKEN not in res["_output"]


def test_check_mode_sends_nothing_and_bad_url_fails(tmp_path):
    with WebhookReceiver() as hook:
        res = run_module("migration_notify", notify_args(event="started", webhook_url=hook.url("/x")), tmp_path,
                         check=True)
        assert res["changed"] is True and "check mode" in res["msg"] and hook.posts == []
    none = run_module("migration_notify", notify_args(), tmp_path)
    assert none["changed"] is False and "no receiver configured" in none["msg"]
    bad = run_module("migration_notify", notify_args(webhook_url="ftp://example.com/hook"), tmp_path)
    assert bad.get("failed") is True and "http(s)://" in bad["msg"]


@pytest.fixture(scope="module")
def smtp_cert(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (cert, key)."""
    path = tmp_path_factory.mktemp("smtp-tls")
    cert, key = path / "cert.pem", path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


def test_mail_defaults_to_starttls_and_never_falls_back_to_plain_text(tmp_path):
    """By default a server without STARTTLS gets no mail (it used to be sent in clear text)."""
    with SmtpReceiver() as smtp:
        res = run_module("migration_notify", notify_args(email_to=["dba@example.com"], smtp_host="127.0.0.1",
                                                         smtp_port=smtp.port), tmp_path)
        mails = list(smtp.mails)
    assert res.get("failed") is not True and res["delivered"]["email"] is False and mails == []
    warnings = " ".join(res.get("warnings", []))
    assert "does not offer STARTTLS" in warnings and "report_notify_smtp_security" in warnings


def test_starttls_verifies_the_servers_certificate(tmp_path, smtp_cert):
    with SmtpReceiver(tls=smtp_cert) as smtp:
        args = notify_args(email_to=["dba@example.com"], smtp_host="127.0.0.1", smtp_port=smtp.port)
        unknown = run_module("migration_notify", args, tmp_path)
        assert smtp.mails == [] and unknown["delivered"]["email"] is False
        warnings = " ".join(unknown.get("warnings", []))
        assert "CERTIFICATE_VERIFY_FAILED" in warnings and "report_notify_smtp_ca_file" in warnings
        trusted = run_module("migration_notify", {**args, "smtp_ca_file": smtp_cert[0]}, tmp_path)
        assert trusted.get("failed") is not True and trusted["delivered"]["email"] is True, trusted.get("warnings")
        assert len(smtp.mails) == 1 and smtp.mails[0]["to"] == ["dba@example.com"]

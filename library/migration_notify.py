#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r'''
---
module: migration_notify
short_description: Tell people that a migration started, succeeded or failed (webhook and mail)
description:
  - Sends a short message about a migration run (runbook 7.2) to a Slack-compatible webhook (a JSON C(text) plus an
    attachment with the summary's fields) and/or by mail through an SMTP server.
  - A receiver that cannot be reached is a warning, never a failure; a notification must not fail a migration.
  - No secret reaches a message. The values in O(redact) (for example the database password), C(key=value) secrets
    (password, token, secret, api_key), passwords in URLs, and the paths of the webhook's URL (where hook tokens
    live) are replaced by C(***) in every text sent.
version_added: "1.0.0"
author: pgmigrate-ops contributors
attributes:
  check_mode:
    support: full
    details: Builds the message and returns it; sends nothing.
  diff_mode:
    support: none
options:
  event:
    description: What happened.
    type: str
    choices: [started, succeeded, failed, rolled_back]
    required: true
  version:
    description: Version the run migrates to.
    type: str
    required: true
  run_id:
    description: The run's id in the ledger.
    type: int
  environment:
    description: Environment name (the inventory's).
    type: str
    default: default
  title:
    description: One line about the migration (the plan's title).
    type: str
  summary:
    description: Facts for the message, name -> value (records migrated, duration, failed phase, report path ...).
    type: dict
    default: {}
  webhook_url:
    description: Slack-compatible incoming webhook URL. Unset or empty means no webhook.
    type: str
  email_to:
    description: Mail recipients. Empty means no mail.
    type: list
    elements: str
    default: []
  email_from:
    description: Sender address of the mail.
    type: str
    default: pgmigrate-ops@localhost
  smtp_host:
    description: SMTP server.
    type: str
    default: localhost
  smtp_port:
    description:
      - SMTP port; V(0) means the port of O(smtp_security) (587 for V(starttls), 465 for V(tls), 25 for V(plain)).
    type: int
    default: 0
  smtp_security:
    description:
      - How the mail is protected. V(starttls) (the default) upgrades the connection with STARTTLS and does not send
        when the server does not offer it; V(tls) connects with TLS from the start (SMTPS); V(plain) sends in clear
        text, an explicit choice for a relay on loopback or a trusted network.
    type: str
    choices: [starttls, tls, plain]
    default: starttls
  smtp_validate_certs:
    description:
      - Verify the server's certificate and host name with TLS (the system's CAs, or O(smtp_ca_file)). V(false) only
        for a test relay with a self-signed certificate.
    type: bool
    default: true
  smtp_ca_file:
    description: CA bundle (PEM) that signed the SMTP server's certificate, instead of the system's CAs.
    type: path
  smtp_username:
    description: SMTP login (with O(smtp_password)).
    type: str
  smtp_password:
    description: SMTP password.
    type: str
  redact:
    description: Secret values that must never appear in a message (the database password, tokens ...).
    type: list
    elements: str
    default: []
  timeout:
    description: Seconds to wait for each receiver.
    type: float
    default: 5
'''

EXAMPLES = r'''
- name: Tell the team that the migration succeeded
  migration_notify:
    event: succeeded
    version: "{{ pgmigrate_version }}"
    run_id: "{{ pgmigrate_run_id }}"
    environment: "{{ pgmigrate_environment }}"
    title: "{{ pgmigrate_plan.title }}"
    summary:
      records migrated: 100000
      report: reports/2.0.0/migration_report_20261125.md
    webhook_url: "{{ report_notify_webhook_url }}"
    email_to: "{{ report_notify_email_to }}"
    smtp_host: "{{ report_notify_smtp_host }}"
    smtp_security: starttls
    redact: ["{{ pgmigrate_db_password }}"]
'''

RETURN = r'''
subject:
  description: The one-line subject of the message (also the webhook's C(text) first line).
  returned: always
  type: str
message:
  description: The message as sent (secrets removed).
  returned: always
  type: str
delivered:
  description: Per channel, whether the receiver took the message (null when the channel is not configured).
  returned: always
  type: dict
  sample: {webhook: true, email: null}
'''

import json
import smtplib
import ssl
from email.message import EmailMessage

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pgmigrate_report import redact, redact_data

from ansible.module_utils.pgmigrate_http import http_request

ICONS = {"started": ":arrow_forward:", "succeeded": ":white_check_mark:", "failed": ":x:",
         "rolled_back": ":leftwards_arrow_with_hook:"}
COLOURS = {"started": "#439FE0", "succeeded": "good", "failed": "danger", "rolled_back": "warning"}


def build_message(p: dict) -> tuple[str, str, dict]:
    run = f"run #{p['run_id']}" if p.get("run_id") else "no run id"
    subject = f"[pgmigrate-ops] {p['environment']}: migration to {p['version']} {p['event'].replace('_', ' ')} ({run})"
    lines = [subject]
    if p.get("title"):
        lines.append(p["title"])
    for key, value in (p.get("summary") or {}).items():
        if value is None or value == "":
            continue
        lines.append(f"- {key}: {value}")
    text = "\n".join(lines)
    secrets = list(p["redact"]) + [p.get("smtp_password") or ""]
    hooks = [p.get("webhook_url") or ""]
    subject = redact(subject, secrets, hooks)
    text = redact(text, secrets, hooks)
    fields = [{"title": str(k), "value": str(v), "short": len(str(v)) < 40}
              for k, v in redact_data(p.get("summary") or {}, secrets, hooks).items() if v not in (None, "")]
    payload = {"text": f"{ICONS.get(p['event'], '')} {subject}".strip(), "username": "pgmigrate-ops",
               "attachments": [{"color": COLOURS.get(p["event"], "#cccccc"),
                                "title": redact(p.get("title") or "", secrets, hooks), "fields": fields,
                                "fallback": text}]}
    return subject, text, payload


def post_webhook(url: str, payload: dict, timeout: float) -> str | None:
    answer = http_request(url, method="POST", data=json.dumps(payload).encode(),
                          headers={"Content-Type": "application/json"}, timeout=timeout)
    if answer.status == 0:
        return answer.error
    return None if 200 <= answer.status < 300 else f"HTTP {answer.status}"


def send_mail(p: dict, subject: str, text: str) -> str | None:
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = p["email_from"]
    message["To"] = ", ".join(p["email_to"])
    message.set_content(text)
    security = p["smtp_security"]
    port = p["smtp_port"] or SMTP_PORTS[security]
    context = tls_context(p) if security != "plain" else None
    try:
        if security == "tls":
            client = smtplib.SMTP_SSL(p["smtp_host"], port, timeout=p["timeout"], context=context)
        else:
            client = smtplib.SMTP(p["smtp_host"], port, timeout=p["timeout"])
        with client as smtp:
            if security == "starttls":
                smtp.starttls(context=context)
            if p["smtp_username"]:
                smtp.login(p["smtp_username"], p["smtp_password"] or "")
            smtp.send_message(message)
    except smtplib.SMTPNotSupportedError as exc:
        return (f"{type(exc).__name__}: {exc}; the server {p['smtp_host']}:{port} does not offer STARTTLS: use "
                "smtp_security tls (report_notify_smtp_security) for SMTPS, or plain to send in clear text on a "
                "trusted network")
    except ssl.SSLError as exc:
        return (f"{type(exc).__name__}: {exc}; the TLS connection to {p['smtp_host']}:{port} was refused: give the CA "
                "that signed its certificate in smtp_ca_file (report_notify_smtp_ca_file)")
    except (smtplib.SMTPException, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


SMTP_PORTS = {"starttls": 587, "tls": 465, "plain": 25}


def tls_context(p: dict) -> ssl.SSLContext:
    """TLS with the server's certificate and host name verified, unless smtp_validate_certs is false."""
    context = ssl.create_default_context(cafile=p["smtp_ca_file"] or None)
    if not p["smtp_validate_certs"]:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            event=dict(type="str", required=True, choices=["started", "succeeded", "failed", "rolled_back"]),
            version=dict(type="str", required=True),
            run_id=dict(type="int"),
            environment=dict(type="str", default="default"),
            title=dict(type="str"),
            summary=dict(type="dict", default={}),
            webhook_url=dict(type="str", no_log=True),
            email_to=dict(type="list", elements="str", default=[]),
            email_from=dict(type="str", default="pgmigrate-ops@localhost"),
            smtp_host=dict(type="str", default="localhost"),
            smtp_port=dict(type="int", default=0),
            smtp_security=dict(type="str", default="starttls", choices=["starttls", "tls", "plain"]),
            smtp_validate_certs=dict(type="bool", default=True),
            smtp_ca_file=dict(type="path"),
            smtp_username=dict(type="str"),
            smtp_password=dict(type="str", no_log=True),
            redact=dict(type="list", elements="str", default=[], no_log=True),
            timeout=dict(type="float", default=5),
        ),
        supports_check_mode=True,
    )
    p = module.params
    p["email_to"] = [a for a in p["email_to"] if a]
    webhook = (p["webhook_url"] or "").strip()
    if webhook and not webhook.startswith(("http://", "https://")):
        module.fail_json(msg="webhook_url must be an http(s):// URL (report_notify_webhook_url in the inventory)")
    subject, text, payload = build_message(p)
    delivered = {"webhook": None, "email": None}
    result = {"changed": False, "subject": subject, "message": text, "delivered": delivered}
    if not webhook and not p["email_to"]:
        result["msg"] = "no receiver configured (report_notify_webhook_url / report_notify_email_to): nothing sent"
        module.exit_json(**result)
    if module.check_mode:
        result.update(changed=True, msg="check mode: nothing sent")
        module.exit_json(**result)
    secrets = list(p["redact"]) + [p["smtp_password"] or ""]
    if webhook:
        error = post_webhook(webhook, payload, p["timeout"])
        delivered["webhook"] = error is None
        if error:
            # The URL's path holds the hook's token: name only its host.
            module.warn(f"the webhook did not take the {p['event']} notification "
                        f"({redact(error, secrets, [webhook])}); the migration goes on")
    if p["email_to"]:
        error = send_mail(p, subject, text)
        delivered["email"] = error is None
        if error:
            module.warn(f"the mail to {', '.join(p['email_to'])} was not sent ({redact(error, secrets, [webhook])}); "
                        "the migration goes on")
    result["changed"] = any(v for v in delivered.values())
    result["msg"] = ", ".join(f"{k}: {'sent' if v else 'NOT sent'}" for k, v in delivered.items() if v is not None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()

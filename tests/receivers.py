"""Real notification receivers on loopback for the tests: a webhook server that records
every POST, and an SMTP server (aiosmtpd) that records every mail."""
from __future__ import annotations

import email
import email.policy
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller
from validate_helpers import free_port


class WebhookReceiver:
    def __init__(self) -> None:
        self.posts: list[dict] = []
        received = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append({"path": self.path, "raw": body.decode(), "json": json.loads(body or b"null")})
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class _MailHandler:
    def __init__(self, store: list) -> None:
        self.store = store

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        # Decoded subject and body (quoted-printable would hide a secret from a plain search).
        self.store.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                           "raw": envelope.content.decode(errors="replace"),
                           "data": f"Subject: {message['Subject']}\n{message.get_content()}"})
        return "250 OK"


class SmtpReceiver:
    """Without ``tls``: a plain SMTP server that offers no STARTTLS.  With ``tls`` (cert and key files): it
    offers STARTTLS with that certificate and takes no mail before it."""

    def __init__(self, tls: tuple[str, str] | None = None) -> None:
        self.mails: list[dict] = []
        self.port = free_port()
        extra = {}
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*tls)
            extra = {"tls_context": context, "require_starttls": True}
        self.controller = Controller(_MailHandler(self.mails), hostname="127.0.0.1", port=self.port, **extra)

    def __enter__(self) -> SmtpReceiver:
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()

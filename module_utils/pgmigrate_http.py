# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pgmigrate-ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one HTTP client of the modules: validation's smoke and load requests, the Pushgateway, the webhook.

Built on ansible.module_utils.urls.open_url, which honours the proxy environment (http_proxy, https_proxy,
no_proxy) and verifies TLS certificates and host names (on by default here too).  An HTTP error status is an
answer (status and body); no answer at all is status 0 with the reason, which names the URL's origin only
(scheme, host, port): a URL's user and password, path and query can hold a token and never reach a message.
"""
from __future__ import annotations

import urllib.error
import urllib.parse
from typing import NamedTuple

from ansible.module_utils.urls import ConnectionError as UrlsConnectionError
from ansible.module_utils.urls import open_url

USER_AGENT = "pgmigrate-ops"


class HttpAnswer(NamedTuple):
    status: int  # 0: nothing answered (see error)
    body: bytes
    error: str | None


def origin(url: str) -> str:
    """scheme://host[:port] of a URL, without user, password, path or query."""
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parsed.port}" if parsed.port else ""
    except ValueError:
        port = ""
    return f"{parsed.scheme}://{host}{port}"


def http_request(url: str, method: str = "GET", data: bytes | None = None, headers: dict | None = None,
                 timeout: float = 10.0, validate_certs: bool = True) -> HttpAnswer:
    """Send one request and read the whole answer, never raising for the network or the status."""
    try:
        with open_url(url, data=data, headers=headers or {}, method=method, timeout=timeout,
                      validate_certs=validate_certs, http_agent=USER_AGENT, use_netrc=False) as response:
            return HttpAnswer(response.status, response.read(), None)
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read()
        except OSError:
            body = b""
        return HttpAnswer(exc.code, body or b"", None)
    except (urllib.error.URLError, UrlsConnectionError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        kind = type(reason if isinstance(reason, BaseException) else exc).__name__
        return HttpAnswer(0, b"", f"no answer from {origin(url)}: {kind}: {scrub(str(reason), url)}")


def scrub(text: str, url: str) -> str:
    """text without the URL or the parts of it that can hold a secret (user and password, path and query)."""
    parsed = urllib.parse.urlsplit(url)
    userinfo = parsed.netloc.rpartition("@")[0]
    rest = parsed.path + (f"?{parsed.query}" if parsed.query else "")
    text = text.replace(url, origin(url))
    for part in (f"{userinfo}@" if userinfo else "", rest if rest.strip("/") else ""):
        if part:
            text = text.replace(part, "***")
    return text

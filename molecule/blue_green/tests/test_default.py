"""Verify the blue_green role (testinfra): the live colour, the served version, nginx's
configuration valid, both colours in supervisord's state."""
from __future__ import annotations

import json

STATE = "/tmp/pgmigrate-molecule-blue_green/deploy"
PROXY = "http://127.0.0.1:18512"


def test_nginx_serves_release_2_on_green(host):
    health = json.loads(host.check_output(f"curl -fsS {PROXY}/health"))
    assert health["version"] == "2.0.0" and health["colour"] == "green" and health["status"] == "ok"


def test_the_active_upstream_names_green(host):
    text = host.file(f"{STATE}/nginx/active_upstream.conf").content_string
    marker = next(line for line in text.splitlines() if line.startswith("# pgmigrate-active: "))
    members = json.loads(marker.split(": ", 1)[1])["members"]
    assert [m["name"] for m in members] == ["green"]


def test_nginx_configuration_is_valid(host):
    assert host.run(f"/usr/sbin/nginx -t -q -c {STATE}/nginx/nginx.conf").rc == 0


def test_both_colours_run_under_supervisord(host):
    out = host.check_output(f"/usr/bin/supervisorctl -c {STATE}/supervisor/supervisord.conf status")
    states = {line.split()[0]: line.split()[1] for line in out.splitlines()}
    assert states == {"app-blue": "RUNNING", "app-green": "RUNNING"}
    blue = json.loads(host.check_output("curl -fsS http://127.0.0.1:18513/health"))
    assert blue["version"] == "1.0.0"


def test_no_password_on_disk_outside_the_secret_file(host):
    env = host.file(f"{STATE}/colours/green/config/.env")
    assert "password=" not in env.content_string.lower()
    assert host.file(f"{STATE}/secrets/db.password").mode == 0o600

#!/usr/bin/env python3
"""Probes a running `herald up` as an attacker and a careless client would.

One check per kind of break the hostile-input suite keeps closed, each from outside: plain
sockets and HTTP from Python's standard library, tokens from `herald token`, files read from
the data folder. Each prints CLOSED (the break cannot happen) or OPEN (it can, and how).

    herald up &                                    # note its address and data folder
    python3 infra/scripts/probe.py http://127.0.0.1:8080 ~/.local/share/herald target/release/herald

Exit status: the number of OPEN checks.
"""

import email.parser as email_parser
import email.policy as email_policy
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

BASE, DATA, HERALD = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
HOST, PORT = BASE.split("//")[1].split(":")[0], int(BASE.rsplit(":", 1)[1])
results = []


def token(sub, role):
    env = dict(os.environ, HERALD_DATA_DIR=DATA)
    env.pop("JWT_HS256_SECRET", None)
    out = subprocess.run([HERALD, "token", "--sub", sub, "--role", role], env=env,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def call(method, path, body=None, bearer=None, content_type="application/json", timeout=10):
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(BASE + path, data=data, method=method)
    if data is not None:
        request.add_header("content-type", content_type)
    if bearer:
        request.add_header("authorization", "Bearer " + bearer)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            text = answer.read().decode(errors="replace")
            return answer.status, text
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def check(name, closed, detail):
    results.append(closed)
    print(f"{'CLOSED' if closed else 'OPEN  '}  {name}: {detail}")


def email():
    return f"probe-{uuid.uuid4().hex[:10]}@example.com"


PASSWORD = "correct horse battery staple"


def silent_sockets():
    held = []
    try:
        for i in range(1300):
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.connect((HOST, PORT))
            if i >= 1100:
                s.sendall(b"PRI * HTTP/2.0\r\n")
            held.append(s)
        started = time.monotonic()
        try:
            status, _ = call("GET", "/healthz", timeout=5)
        except Exception as error:  # a timeout: the API is down for everyone
            status = repr(error)
        took = time.monotonic() - started
        check("1. silent sockets", status == 200,
              f"1,100 silent and 200 half-preface sockets from 127.0.0.2; /healthz from "
              f"127.0.0.1 answered {status} in {took:.2f} s")
    finally:
        for s in held:
            s.close()


def control_characters_in_a_name():
    status, text = call("POST", "/api/v1/auth/register", {
        "email": email(), "password": PASSWORD, "display_name": "Eve\r\nBcc: x@evil.example"})
    check("2. CR/LF in a display name", status == 422, f"register answered {status}")


def someone_elses_order():
    mallory = token("mallory", "user")
    status, _ = call("POST", "/api/v1/events", {"type": "order.placed", "data": {
        "order_id": "o-" + uuid.uuid4().hex[:8], "customer_id": "victim",
        "items": [{"sku": "x", "quantity": 1, "unit_price_cents": 1}], "total_cents": 1,
        "currency": "EUR"}}, bearer=mallory)
    check("3. a user publishes for another", status == 403, f"ingress answered {status}")


def live_secrets_at_rest():
    address = email()
    assert call("POST", "/api/v1/auth/register", {"email": address, "password": PASSWORD})[0] == 201
    call("POST", "/api/v1/auth/password/forgot", {"email": address})
    outbox, link = os.path.join(DATA, "outbox"), None
    deadline = time.monotonic() + 90
    while link is None and time.monotonic() < deadline:
        for name in os.listdir(outbox) if os.path.isdir(outbox) else []:
            with open(os.path.join(outbox, name), "rb") as file:
                message = email_parser.BytesParser(policy=email_policy.default).parse(file)
            body = message.get_body(("plain",))
            text = body.get_content() if body else ""
            if address in str(message["to"]) and "#token=" in text:
                link = text.split("#token=")[1].split()[0].split("<")[0].strip()
        time.sleep(0.5)
    if link is None:
        check("4. live secrets at rest", False, "no reset email arrived in 90 s")
        return
    found = []
    for root, _, files in os.walk(DATA):
        if os.path.abspath(root).startswith(os.path.abspath(outbox)):
            continue
        for name in files:
            path = os.path.join(root, name)
            try:
                if link.encode() in open(path, "rb").read():
                    found.append(os.path.relpath(path, DATA))
            except OSError:
                pass
    check("4. live secrets at rest", not found,
          f"the reset link's token is in {found or 'no file'} besides the email sent")


def phone_takeover():
    phone = "+1555" + str(uuid.uuid4().int % 10_000_000).zfill(7)
    victim, attacker = email(), email()
    call("POST", "/api/v1/auth/register", {"email": victim, "password": PASSWORD, "phone": phone})
    status, text = call("POST", "/api/v1/auth/register",
                        {"email": attacker, "password": PASSWORD, "phone": phone})
    attacker_id = json.loads(text)["id"] if status == 201 else None
    call("POST", "/api/v1/auth/otp/request", {"phone": phone})
    admin = token("probe-admin", "admin")
    time.sleep(3)
    _, audit = call("GET", "/api/v1/audit?limit=100", bearer=admin)
    codes = [row for row in json.loads(audit).get("items", [])
             if row.get("event_type") == "otp.requested"
             and json.dumps(row).find(phone) >= 0]
    to_attacker = [row for row in codes if attacker_id and attacker_id in json.dumps(row)]
    check("5. someone else's phone", not to_attacker,
          f"{len(codes)} sign-in codes for the phone, {len(to_attacker)} to the second account")


def login_limit_with_a_token():
    address = email()
    call("POST", "/api/v1/auth/register", {"email": address, "password": PASSWORD})
    bearer = token("probe-" + uuid.uuid4().hex[:6], "user")
    statuses = [call("POST", "/api/v1/auth/login", {"email": address, "password": "wrong guess " + str(i)},
                     bearer=bearer)[0] for i in range(40)]
    check("6. login guesses with a token attached", 429 in statuses,
          f"40 wrong passwords: {statuses.count(401)} x 401, {statuses.count(429)} x 429")


def invented_methods():
    methods = ["X" + uuid.uuid4().hex[:8].upper() for _ in range(100)]
    for method in methods:
        try:
            call(method, "/healthz")
        except Exception:
            pass
    _, metrics = call("GET", "/metrics")
    leaked = [m for m in methods if m in metrics]
    check("7. invented methods in /metrics", not leaked, f"{len(leaked)} of 100 became series")


def bad_search_query():
    status, _ = call("GET", "/api/v1/search?q=title:*", bearer=token("probe-reader", "user"))
    check("8. a query the index cannot run", 400 <= status < 500, f"search answered {status}")


def cross_site_form():
    status, _ = call("POST", "/api/v1/auth/register",
                     json.dumps({"email": email(), "password": PASSWORD}).encode(),
                     content_type="text/plain")
    check("9. a text/plain body on an auth route", status == 415, f"register answered {status}")


def pointer_escaping():
    service = token("probe-service", "service")
    status, text = call("POST", "/api/v1/events", {"type": "order.shipped", "a/b~c": 1, "data": {
        "order_id": "o-1", "carrier": "DHL", "shipped_at": "2026-11-22T09:30:00Z"}}, bearer=service)
    pointers = [e["pointer"] for e in json.loads(text).get("errors", [])] if status == 422 else []
    check("10. error pointers escaped", pointers == ["/a~1b~0c"], f"{status} {pointers}")


def year_zero():
    service = token("probe-service", "service")
    status, _ = call("POST", "/api/v1/events", {"type": "order.shipped",
                     "occurred_at": "0000-01-01T00:00:00Z", "data": {
                         "order_id": "o-1", "carrier": "DHL", "shipped_at": "2026-11-22T09:30:00Z"}},
                     bearer=service)
    check("11. occurred_at in year 0000", status == 422, f"ingress answered {status}")


def negative_amounts():
    alice = token("alice", "user")
    status, _ = call("POST", "/api/v1/events", {"type": "order.placed", "data": {
        "order_id": "o-neg", "customer_id": "alice",
        "items": [{"sku": "x", "quantity": -3, "unit_price_cents": 100}], "total_cents": 999,
        "currency": "EUR"}}, bearer=alice)
    check("12. negative quantity, a total that disagrees", status == 422,
          f"ingress answered {status}")


for probe in [silent_sockets, control_characters_in_a_name, someone_elses_order,
              live_secrets_at_rest, phone_takeover, login_limit_with_a_token, invented_methods,
              bad_search_query, cross_site_form, pointer_escaping, year_zero, negative_amounts]:
    try:
        probe()
    except Exception as error:
        check(probe.__name__, False, f"the probe failed: {error!r}")
open_count = results.count(False)
print(f"{len(results) - open_count} closed, {open_count} open")
sys.exit(open_count)

"""One request through the sidecar with Python requests, as a connector makes it.

Usage: python3 client.py CASE URL BODY_FILE

CASE is get, content-length, chunked or expect. The client is used with its
defaults: no session settings, no adapters. Prints "sending" right before
the request, then one JSON object: {"status": int, "body": str,
"continues": int}.

continues counts the 100 Continue responses that http.client read. It skips
every 1xx response before the final one, so the count comes from its debug
output (HTTPConnection.debuglevel, the documented switch that requests'
own docs show), which prints each status line it reads as "reply: '...'".
"""

import contextlib
import http.client
import io
import json
import re
import sys

import requests

CHUNK = 64 << 10
OCTETS = {"Content-Type": "application/octet-stream"}
CONTINUE_LINE = re.compile(r"^reply: 'HTTP/1\.[01] 100 ", re.MULTILINE)


def chunks(body):
    """A generator body: requests sends it with Transfer-Encoding: chunked."""
    for i in range(0, len(body), CHUNK):
        yield body[i : i + CHUNK]


def send(case, url, body):
    if case == "get":
        return requests.get(url)
    if case == "content-length":
        return requests.post(url, data=body, headers=OCTETS)
    if case == "chunked":
        return requests.post(url, data=chunks(body), headers=OCTETS)
    if case == "expect":
        # http.client does not wait for the 100: it sends the body at once.
        return requests.post(url, data=body, headers={**OCTETS, "Expect": "100-continue"})
    raise SystemExit(f"unknown case {case!r}")


def main():
    case, url, body_file = sys.argv[1:4]
    body = b""
    if case != "get":
        with open(body_file, "rb") as f:
            body = f.read()
    http.client.HTTPConnection.debuglevel = 1
    debug = io.StringIO()
    print("sending", flush=True)
    with contextlib.redirect_stdout(debug):
        resp = send(case, url, body)
    continues = len(CONTINUE_LINE.findall(debug.getvalue()))
    json.dump({"status": resp.status_code, "body": resp.text, "continues": continues}, sys.stdout)
    print()


if __name__ == "__main__":
    main()

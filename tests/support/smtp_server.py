"""A real SMTP server on loopback for the notification tests (aiosmtpd).

    python3 smtp_server.py <messages.jsonl> [--fast]

Prints the port it listens on, then appends one JSON line per accepted message (envelope
sender and recipients, raw content, the headers and bodies decoded, and `at`, the time of
acceptance in seconds since the epoch) to the file; with --fast (benchmarks) only the
recipients and `at`. A file named <messages.jsonl>.reject makes it
answer 451 (try again later) to every message while it exists. Runs until stdin closes.
"""

import email
import email.policy
import json
import os
import socket
import sys
import time

from aiosmtpd.controller import Controller


class Recorder:
    def __init__(self, path, fast):
        self.path = path
        self.fast = fast
        self.out = open(path, "a", encoding="utf-8")

    async def handle_DATA(self, server, session, envelope):
        if os.path.exists(self.path + ".reject"):
            return "451 4.3.0 test server refusing for now"
        at = time.time()
        if self.fast:
            self.out.write(json.dumps({"rcpt_tos": envelope.rcpt_tos, "at": at}) + "\n")
            self.out.flush()
            return "250 OK"
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        text = message.get_body(("plain",))
        html = message.get_body(("html",))
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "content": envelope.content.decode("utf-8", "replace"),
            # Decoded, as a mail client shows them.
            "from": str(message["from"]),
            "to": str(message["to"]),
            "subject": str(message["subject"]),
            "message_id": str(message["message-id"]),
            "text": text.get_content() if text else None,
            "html": html.get_content() if html else None,
            "at": at,
        }
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()
        return "250 OK"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    path = sys.argv[1]
    fast = "--fast" in sys.argv[2:]
    port = free_port()
    controller = Controller(Recorder(path, fast), hostname="127.0.0.1", port=port)
    controller.start()
    print(port, flush=True)
    try:
        sys.stdin.read()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()

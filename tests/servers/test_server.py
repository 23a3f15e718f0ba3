#!/usr/bin/env python3
"""A local HTTP server for the examples' tests: slow downloads and a small backend.

Listens on 127.0.0.1 only, on a free port, and prints "port <n>" on stdout once it
accepts connections (so a test never races another program for a port). It runs
until it is killed; each request runs in a thread of its own.

  /stream?size=N&chunk=C&delay_ms=D&cut_at=K
      N bytes (Content-Length: N) sent C bytes at a time with D ms between chunks.
      Byte i of the body is i % 251, so a client can check what it got.
      With cut_at, the connection is closed after K bytes: a truncated body.
      Defaults: size 1 MiB, chunk 16 KiB, delay 0, no cut.
  /redirect?to=PATH
      302 to PATH.
  /user/<id>, /orders/<id>, /stock/<id>
      The backend of c_examples/thread_pool_server.c. Bodies: "user-<id>",
      "<id % 7> orders", "<id * 3 % 100> in stock". /orders/<id> answers
      503 for every id ending in 9; every endpoint of an id given with --slow
      answers only after --slow-ms (the client is expected to give up first).
  POST /echo
      200 with the request's body, under the request's Content-Type.

Usage: test_server.py [--slow ID]... [--slow-ms MS] [--until-stdin-closes]
  --until-stdin-closes  also stop when stdin reaches its end, so that a server whose
                        parent died without killing it does not linger.
"""

import argparse
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def pattern(start, length):
    """Bytes start..start+length of the /stream body."""
    return bytes((start + i) % 251 for i in range(length))


class Handler(BaseHTTPRequestHandler):
    # Keep-alive, so that a client's pooled connections are reused.
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, the body waits for
    # the client's delayed ACK of the headers (40 ms per reply).
    disable_nagle_algorithm = True
    slow_ids = set()
    slow_ms = 60_000

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass  # quiet: the tests read the clients' output, not ours

    def reply(self, status, body, content_type="text/plain"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        try:
            if parts == ["stream"]:
                self.stream(parse_qs(url.query))
            elif parts == ["redirect"]:
                self.send_response(302)
                self.send_header("Location", parse_qs(url.query).get("to", ["/"])[0])
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif len(parts) == 2 and parts[0] in ("user", "orders", "stock"):
                self.backend(parts[0], int(parts[1]))
            else:
                self.reply(404, b"not found\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (cancelled): nothing to do

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if urlsplit(self.path).path == "/echo":
            content_type = self.headers.get("Content-Type", "application/octet-stream")
            self.reply(200, body, content_type)
        else:
            self.reply(404, b"not found\n")

    def stream(self, query):
        def number(name, default):
            return int(query.get(name, [default])[0])

        size = number("size", 1 << 20)
        chunk = max(1, number("chunk", 16 << 10))
        delay = number("delay_ms", 0) / 1000.0
        cut_at = number("cut_at", -1)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        block = pattern(0, 251 * ((chunk + 250) // 251 + 1))
        sent = 0
        while sent < size:
            if sent == cut_at:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            n = min(chunk, size - sent, cut_at - sent if cut_at > sent else size)
            offset = sent % 251
            self.wfile.write(block[offset : offset + n])
            self.wfile.flush()
            sent += n
            if delay and sent < size:
                time.sleep(delay)

    def backend(self, kind, ident):
        if ident in self.slow_ids:
            # Wait, but stop once the client has gone: a cancelled call closes
            # its connection, which then reads as end of file.
            deadline = time.monotonic() + self.slow_ms / 1000.0
            while time.monotonic() < deadline:
                readable, _, _ = select.select([self.connection], [], [], 0.05)
                if readable and not self.connection.recv(1, socket.MSG_PEEK):
                    return
        if kind == "orders" and ident % 10 == 9:
            self.reply(503, b"orders service unavailable\n")
        elif kind == "user":
            self.reply(200, b"user-%d" % ident)
        elif kind == "orders":
            self.reply(200, b"%d orders" % (ident % 7))
        else:
            self.reply(200, b"%d in stock" % (ident * 3 % 100))


class Server(ThreadingHTTPServer):
    daemon_threads = True  # a slow reply never keeps the process alive
    # The default backlog (5) drops the connections of a burst of concurrent clients,
    # which then wait a second to retry.
    request_queue_size = 128

    def handle_error(self, request, client_address):
        # A cancelled call closes its connection, often with unread data, hence a
        # reset: what the tests do on purpose is not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, action="append", default=[])
    parser.add_argument("--slow-ms", type=int, default=60_000)
    parser.add_argument("--until-stdin-closes", action="store_true")
    args = parser.parse_args()
    Handler.slow_ids = set(args.slow)
    Handler.slow_ms = args.slow_ms

    server = Server(("127.0.0.1", 0), Handler)
    print("port", server.server_address[1], flush=True)
    if args.until_stdin_closes:
        threading.Thread(target=lambda: (sys.stdin.read(), server.shutdown()), daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    server.server_close()


if __name__ == "__main__":
    main()

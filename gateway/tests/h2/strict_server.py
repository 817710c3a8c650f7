#!/usr/bin/python3
"""A strict h2c (prior knowledge) server built on python-hyper's h2, an HTTP/2 stack
independent of the gateway's: it refuses, with GOAWAY PROTOCOL_ERROR, a request whose host
field differs from its :authority (RFC 9113 §8.3.1), as strict servers do. Each request is
answered 200 with JSON naming the :authority, the host fields and the path it received, and
the number of the connection it came on.
Usage: strict_server.py; prints the port it listens on (127.0.0.1), serves until killed."""

import json
import socket
import sys
import threading

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions


def serve(sock, number):
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    while True:
        data = sock.recv(65535)
        if not data:
            return
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            print(f"protocol error: {e}", file=sys.stderr, flush=True)
            conn.close_connection(error_code=h2.errors.ErrorCodes.PROTOCOL_ERROR)
            sock.sendall(conn.data_to_send())
            sock.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                fields = [(k.decode(), v.decode()) for k, v in event.headers]
                body = json.dumps({
                    "authority": [v for k, v in fields if k == ":authority"],
                    "host": [v for k, v in fields if k == "host"],
                    "path": [v for k, v in fields if k == ":path"][0],
                    "connection": number,
                    "headers": dict((k, v) for k, v in fields if not k.startswith(":")),
                }).encode()
                conn.send_headers(event.stream_id, [
                    (":status", "200"), ("content-type", "application/json"),
                    ("content-length", str(len(body))),
                ])
                conn.send_data(event.stream_id, body, end_stream=True)
        sock.sendall(conn.data_to_send())


def main():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print(listener.getsockname()[1], flush=True)
    number = 0
    while True:
        sock, _ = listener.accept()
        number += 1
        threading.Thread(target=serve, args=(sock, number), daemon=True).start()


main()

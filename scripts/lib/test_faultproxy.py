"""Tests of scripts/lib/faultproxy.py against a real loopback echo server:
python3 -m unittest discover -s scripts/lib -p 'test_*.py'"""

import socket
import socketserver
import threading
import time
import unittest

from faultproxy import FaultProxy


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)


def roundtrip(port, payload=b"ping", timeout=5):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        return s.recv(65536)


class FaultProxyTest(unittest.TestCase):
    def setUp(self):
        self.echo = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
        self.echo.daemon_threads = True
        threading.Thread(target=self.echo.serve_forever, daemon=True).start()
        self.proxy = FaultProxy(self.echo.server_address[1], seed=1).start()

    def tearDown(self):
        self.proxy.stop()
        self.echo.shutdown()
        self.echo.server_close()

    def test_pass_forwards_both_ways(self):
        self.assertEqual(roundtrip(self.proxy.port), b"ping")

    def test_refuse_refuses_then_pass_listens_again_on_the_same_port(self):
        port = self.proxy.port
        self.proxy.set("refuse")
        with self.assertRaises(ConnectionRefusedError):
            roundtrip(port)
        self.proxy.set("pass")
        self.assertEqual(self.proxy.port, port)
        self.assertEqual(roundtrip(port), b"ping")

    def test_refuse_cuts_open_connections(self):
        s = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=5)
        s.sendall(b"a")
        self.assertEqual(s.recv(10), b"a")
        self.proxy.set("refuse")
        try:
            self.assertEqual(s.recv(10), b"")
        except ConnectionResetError:
            pass
        s.close()

    def test_slow_adds_latency_to_the_connection_and_the_answer(self):
        self.proxy.set("slow", latency_ms=300)
        t = time.monotonic()
        self.assertEqual(roundtrip(self.proxy.port), b"ping")
        self.assertGreaterEqual(time.monotonic() - t, 0.55)

    def test_slow_with_cut_drops_answers_after_the_request_went_through(self):
        self.proxy.set("slow", latency_ms=0, cut=1.0)
        for _ in range(3):
            try:
                self.assertEqual(roundtrip(self.proxy.port), b"")
            except ConnectionResetError:
                pass
        self.assertEqual(self.proxy.stats["cut"], 3)


if __name__ == "__main__":
    unittest.main()

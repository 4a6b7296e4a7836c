"""`switchboard proxy` between real processes: the example backend (Examples/ProxyBackend)
and a client on the `websockets` package. The backend is SIGKILLed mid-stream and started
again; the client must notice nothing but a pause."""
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import unittest
import urllib.request

import websockets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = os.environ.get("SWITCHBOARD_BINARY", os.path.join(ROOT, ".build/debug/switchboard"))
BACKEND = os.path.join(ROOT, "Examples/ProxyBackend/backend.py")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, condition, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def listening(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class ProxyProcesses(unittest.TestCase):
    def setUp(self):
        self.backend_port = free_port()
        self.proxy_port = free_port()
        self.processes = []
        self.backend = self.start_backend()
        self.proxy = self.spawn([BINARY, "proxy", "--upstream", f"ws://127.0.0.1:{self.backend_port}/",
                                 "--port", str(self.proxy_port), "--resume-from", "first-message",
                                 "--backoff-max", "0.5", "--log-level", "warning"])
        wait_for("the proxy", lambda: self.ready())

    def tearDown(self):
        for p in self.processes:
            if p.poll() is None:
                p.kill()
            p.wait()

    def spawn(self, args):
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        self.processes.append(p)
        return p

    def start_backend(self):
        p = self.spawn([sys.executable, BACKEND, str(self.backend_port)])
        wait_for("the backend", lambda: listening(self.backend_port))
        return p

    def ready(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.proxy_port}/health/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def test_backend_killed_mid_stream_loses_nothing(self):
        total = 1500

        async def run():
            async with websockets.connect(f"ws://127.0.0.1:{self.proxy_port}/") as ws:
                handled = []

                async def read():
                    async for message in ws:
                        handled.append(int(message.split()[1]))
                        if len(handled) == total:
                            return

                reader = asyncio.create_task(read())
                for n in range(1, total + 1):
                    await ws.send(str(n))
                    await asyncio.sleep(0.002)
                    if n == total // 3:
                        # SIGKILL: no close frame, no goodbye, in-flight messages die with it.
                        self.backend.send_signal(signal.SIGKILL)
                        self.backend.wait()
                    if n == total // 2:
                        self.backend = self.start_backend()
                await asyncio.wait_for(reader, 60)
                return handled

        handled = asyncio.run(run())
        # Every number handled once, in order: the proxy resent what the dead connection had
        # not confirmed, the backend skipped what it had already handled.
        self.assertEqual(handled, list(range(1, total + 1)))

    def test_metrics_count_the_reconnect(self):
        async def run():
            async with websockets.connect(f"ws://127.0.0.1:{self.proxy_port}/") as ws:
                await ws.send("1")
                self.assertEqual(await ws.recv(), "handled 1")
                self.backend.send_signal(signal.SIGKILL)
                self.backend.wait()
                await ws.send("2")
                self.backend = self.start_backend()
                self.assertEqual(await asyncio.wait_for(ws.recv(), 20), "handled 2")

        asyncio.run(run())
        with urllib.request.urlopen(f"http://127.0.0.1:{self.proxy_port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        self.assertIn('switchboard_proxy_upstream_connects_total{result="connected"} 2', metrics)
        self.assertIn('switchboard_proxy_messages_undelivered_total{direction="to_upstream"} 0', metrics)


if __name__ == "__main__":
    unittest.main()

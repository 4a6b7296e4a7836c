"""Real parts for the Express chat browser tests (Examples/ExpressChat): the Express app (node),
`switchboard serve` gateway nodes with the HTTP backend bridge, and a page object for its DOM.
Builds on harness.py (Redis, Process, wait_until, http, free_port, ChatPage); all on loopback and
free ports, every wait bounded."""

import base64
import json
import os
import shutil
import socket
import subprocess
import unittest
from http.cookies import SimpleCookie
from pathlib import Path

from selenium.webdriver.common.by import By

from harness import ROOT, ChatPage, HttpProcess, SwitchboardNode, free_port, http, wait_until

EXAMPLE = ROOT / "Examples/ExpressChat"
SWITCHBOARD_BIN = Path(os.environ.get("SWITCHBOARD_BIN", ROOT / ".build/debug/switchboard"))
NODE_PATH = os.environ.get("NODE_PATH", "/usr/share/nodejs")
BACKEND_SECRET = "express-chat-test-secret-0123456789"
GATEWAY_KEY = "express-chat-test-key"


def require_tools():
    """unittest.SkipTest unless node, Express and Chromium (with chromedriver) are installed; an
    error when the switchboard binary is missing (it is this repository's own build product)."""
    node = shutil.which("node")
    if node is None:
        raise unittest.SkipTest("node is not installed (Node.js 20: apt-get install nodejs)")
    found = subprocess.run([node, "-e", "require.resolve('express')"], env={**os.environ, "NODE_PATH": NODE_PATH},
                           capture_output=True, timeout=30)
    if found.returncode != 0:
        raise unittest.SkipTest(f"express is not found on NODE_PATH={NODE_PATH} (apt-get install node-express)")
    for tool, package in (("chromium", "chromium"), ("chromedriver", "chromium-driver")):
        if shutil.which(tool) is None and not os.access(f"/usr/bin/{tool}", os.X_OK):
            raise unittest.SkipTest(f"{tool} is not installed (apt-get install {package})")
    if not os.access(SWITCHBOARD_BIN, os.X_OK):
        raise RuntimeError(f"{SWITCHBOARD_BIN} is missing: run swift build --product switchboard (or set SWITCHBOARD_BIN)")


class ExpressApp(HttpProcess):
    """Examples/ExpressChat/app.cjs on a free port, publishing through `gateway_urls`."""

    def __init__(self, workdir, gateway_urls, **env):
        self.port = env.pop("port", None) or free_port()
        settings = {"NODE_PATH": NODE_PATH, "PORT": str(self.port), "HOST": "127.0.0.1", "BACKEND_SECRET": BACKEND_SECRET,
                    "GATEWAY_API_KEY": GATEWAY_KEY, "GATEWAY_URLS": ",".join(gateway_urls)}
        settings.update({key: str(value) for key, value in env.items()})
        super().__init__("express", [shutil.which("node"), str(EXAMPLE / "app.cjs")], workdir, env=settings, cwd=str(EXAMPLE))

    def start(self):
        return self.start_when_ready(self.url + "/config", 20, "express to answer /config")

    # --- plain HTTP, as curl would (the `sid` cookie) -----------------------------------------

    def login(self, name):
        """The Cookie header of a fresh login."""
        status, headers, body = http("POST", self.url + "/login", {"name": name})
        assert status == 200, (status, body)
        cookie = SimpleCookie()
        for value in headers.get_all("Set-Cookie"):
            cookie.load(value)
        return f"sid={cookie['sid'].value}"

    def post(self, path, body, cookie=None, headers=None):
        return http("POST", self.url + path, body, {**({"Cookie": cookie} if cookie else {}), **(headers or {})})

    def get(self, path, cookie=None):
        return http("GET", self.url + path, None, {"Cookie": cookie} if cookie else {})


class GatewayNode(SwitchboardNode):
    """`switchboard serve` with the HTTP backend bridge to `express` and the example's rules.json,
    on Redis; restartable on the same port."""

    def __init__(self, workdir, name, redis, express_port, port=None):
        self.port = port or free_port()
        argv = [str(SWITCHBOARD_BIN), "serve", "--config", str(EXAMPLE / "rules.json"), "--host", "127.0.0.1",
                "--port", str(self.port), "--node-id", name, "--redis", redis.url, "--api-key", GATEWAY_KEY,
                "--backend", f"http://127.0.0.1:{express_port}", "--backend-secret", BACKEND_SECRET,
                "--backend-connect-hook", "/switchboard/connect", "--backend-meta", "k",
                "--allowed-origin", f"http://127.0.0.1:{express_port}", "--drain-window", "0.2", "--log-level", "warning"]
        super().__init__(name, argv, workdir, cwd=str(ROOT))

    def upgrade(self, cookie=None, origin=None):
        """(status, body) of a raw WebSocket upgrade request to /ws: 101 when accepted."""
        key = base64.b64encode(os.urandom(16)).decode()
        lines = ["GET /ws HTTP/1.1", f"Host: 127.0.0.1:{self.port}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Protocol: switchboard.v1"]
        if origin:
            lines.append(f"Origin: {origin}")
        if cookie:
            lines.append(f"Cookie: {cookie}")
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            if status != 101:
                s.settimeout(2)
                try:
                    while True:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        rest += chunk
                except OSError:
                    pass
            return status, rest.decode(errors="replace")


class ExpressChatPage(ChatPage):
    """The Express chat page (Examples/ExpressChat/public) in its own headless Chromium profile
    (own cookies, own sessionStorage). messages()/texts()/offsets()/state()/node() come from
    ChatPage: the page keeps the same hooks (#messages li.message[data-offset] .from .text,
    #status[data-state], #node[data-node])."""

    def __init__(self, workdir, label):
        super().__init__(workdir, label)
        self.driver.set_script_timeout(30)

    SIGN_IN_FORM = "login"

    def login(self, name):
        self.sign_in(name)

    def wait_connected(self, timeout=30):
        wait_until(lambda: self.state() == "connected", timeout, f"{self.label}: connected")

    def room(self):
        return self.data("room-title", "room")

    def members(self):
        return self.users("members")

    def notice_status(self):
        return self.data("notice", "status")

    def froms(self):
        return [sender for sender, _ in self.messages()]

    def send_and_wait(self, text, timeout=30):
        """Sends `text` through the form and waits until the room's stream delivered it back."""
        self.send(text)
        wait_until(lambda: text in self.texts(), timeout, f"{self.label}: {text!r} delivered")

    def record_states(self):
        """From now on, window.__states lists every state the page's client goes through."""
        self.js("window.__states = []; window.chat.client.on('state', (s) => window.__states.push(s));")

    def states(self):
        return self.js("return window.__states || [];")

    def click_room(self, room):
        self.driver.find_element(By.CSS_SELECTOR, f'#rooms li[data-room="{room}"] button').click()

    def call(self, script, *args):
        """Runs `script` (an async function body with `chat` and `args` in scope) and returns what it returns."""
        return self.driver.execute_async_script(
            """const done = arguments[arguments.length - 1];
               const args = [...arguments].slice(0, -1);
               (async (chat, args) => { """ + script + """ })(window.chat, args)
                 .then(done, (error) => done({thrown: String(error && error.message || error)}));""", *args)

    def request(self, method, path, body=None):
        """{status, body (parsed JSON when it is), meta} of one request frame sent through the page's client."""
        result = self.call("""const r = await chat.client.request(args[0], args[1], args[2] === null ? undefined : args[2],
                                                                 {timeout: 20000});
                              return {status: r.status, body: r.body, meta: r.meta};""", method, path, body)
        try:
            result["body"] = json.loads(result["body"])
        except (ValueError, TypeError, KeyError):
            pass
        return result

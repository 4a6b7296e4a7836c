"""Real parts for the browser tests: chat node processes, redis-server, nginx and headless
Chromium (selenium + chromedriver), all on loopback and free ports. Every wait is bounded."""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

ROOT = Path(__file__).resolve().parents[2]
CHAT_BIN = Path(os.environ.get("CHAT_BIN", ROOT / ".build/debug/switchboard-chat"))
ARTIFACTS = Path(os.environ.get("BROWSER_ARTIFACTS", ROOT / ".build-artifacts/browser"))
SECRET = "browser-test-secret-with-more-than-32-bytes"
API_KEY = "browser-test-key"


def which(name, *extra):
    for candidate in [shutil.which(name), *extra]:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(f"{name} not found")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout, what):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except Exception as error:  # the page or process may be mid-restart
            last = error
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(0.1)


def http(method, url, body=None, headers=None, timeout=10):
    """(status, headers, parsed JSON or text) of one request."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, hdrs, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, hdrs, raw = error.code, error.headers, error.read()
    try:
        return status, hdrs, json.loads(raw) if raw else None
    except ValueError:
        return status, hdrs, raw.decode(errors="replace")


class Workdir:
    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="chat-browser-"))

    def remove(self):
        shutil.rmtree(self.path, ignore_errors=True)


class Process:
    """One child process, its output in `workdir`/`name`.log; `env` adds to (or overrides) the inherited environment."""

    def __init__(self, name, argv, workdir, cwd=None, env=None):
        self.name, self.argv, self.workdir, self.cwd = name, argv, workdir, cwd
        self.env = None if env is None else {**os.environ, **env}
        self.proc = None
        self.log = workdir.path / f"{name}.log"

    def start(self):
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd, env=self.env,
                                         start_new_session=True)

    def start_when_ready(self, probe_url, timeout, what):
        """Process.start, then wait until GET `probe_url` answers 200; RuntimeError with the log's tail when the
        process exits first. Returns self."""
        Process.start(self)

        def ready():
            if not self.alive():
                return "exited"
            return http("GET", probe_url, timeout=2)[0] == 200

        if wait_until(ready, timeout, what) == "exited":
            raise RuntimeError(f"{self.name} exited at start:\n{self.tail()}")
        return self

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines=30):
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class HttpProcess(Process):
    """A Process serving HTTP on 127.0.0.1:`self.port`."""

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"


class SwitchboardNode(HttpProcess):
    """A switchboard server (a chat node or a gateway): started once its /health/ready answers 200."""

    def start(self):
        return self.start_when_ready(self.url + "/health/ready", 30, f"{self.name} to be ready")


class Redis(Process):
    def __init__(self, workdir):
        self.port = free_port()
        binary = which("redis-server", "/usr/bin/redis-server", "/usr/sbin/redis-server")
        super().__init__("redis", [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                   "--dir", str(workdir.path)], workdir)

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def start(self):
        super().start()

        def pong():
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        wait_until(pong, 15, "redis-server to answer PING")
        return self


class ChatNode(SwitchboardNode):
    """One `switchboard-chat` process (in-memory engine unless `redis` is given)."""

    def __init__(self, workdir, name="chat", redis=None, extra=()):
        self.port = free_port()
        argv = [str(CHAT_BIN), "--host", "127.0.0.1", "--port", str(self.port), "--jwt-secret", SECRET,
                "--api-key", API_KEY, "--node-id", name, "--drain-window", "0.2", "--log-level", "warning", *extra]
        if redis is not None:
            argv += ["--redis-url", redis.url]
        super().__init__(name, argv, workdir, cwd=str(ROOT))


class Nginx(HttpProcess):
    """docs/deploy/nginx.conf (no sticky sessions) in front of `nodes`, on a free port."""

    def __init__(self, workdir, nodes):
        self.port = free_port()
        config = (ROOT / "docs/deploy/nginx.conf").read_text()
        lines = []
        for line in config.splitlines():
            if "server 127.0.0.1:900" in line:
                index = int(line.split("127.0.0.1:900")[1][0]) - 1
                if index >= len(nodes):
                    continue
                line = line.replace(f"127.0.0.1:900{index + 1}", f"127.0.0.1:{nodes[index].port}")
            lines.append(line)
        config = "\n".join(lines).replace("listen 8080", f"listen 127.0.0.1:{self.port}")
        config = config.replace("worker_processes auto;", "worker_processes 1;")
        d = workdir.path
        config = config.replace("http {", f"""http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;""", 1)
        config = f"pid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n" + config
        (d / "nginx.conf").write_text(config)
        binary = which("nginx", "/usr/sbin/nginx")
        super().__init__("nginx", [binary, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "nginx-error.log"),
                                   "-g", "daemon off;"], workdir)

    def start(self):
        super().start()
        wait_until(lambda: http("GET", self.url + "/health/ready", timeout=2)[0] == 200, 15, "nginx to proxy /health/ready")
        return self


class ChatPage:
    """One headless Chromium with its own profile (its own sessionStorage): one user."""

    def __init__(self, workdir, label):
        self.label = label
        options = webdriver.ChromeOptions()
        options.binary_location = which("chromium", "/usr/bin/chromium")
        for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1100,700",
                    "--no-first-run", "--disable-extensions", "--disable-background-networking", "--force-device-scale-factor=1",
                    f"--user-data-dir={workdir.path / ('profile-' + label)}"]:
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(executable_path=which("chromedriver", "/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"),
                          log_output=str(workdir.path / f"chromedriver-{label}.log"))
        self.driver = webdriver.Chrome(options=options, service=service)
        self.driver.set_page_load_timeout(30)
        self.driver.set_script_timeout(10)

    def quit(self):
        try:
            self.driver.quit()
        except Exception:
            pass

    # --- reading the page --------------------------------------------------

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def messages(self):
        """[(from, text)] of the room on screen, top to bottom."""
        return [tuple(m) for m in self.js("""return [...document.querySelectorAll('#messages li.message')]
            .map(li => [li.querySelector('.from').textContent, li.querySelector('.text').textContent]);""")]

    def texts(self):
        return [text for _, text in self.messages()]

    def local_messages(self):
        """[(text, status)] of this page's own messages the room's stream has not delivered yet,
        top to bottom; status is 'pending' (the server has not answered) or 'sent'."""
        return [tuple(m) for m in self.js("""return [...document.querySelectorAll('#messages li.local')]
            .map(li => [li.querySelector('.text').textContent, li.dataset.status]);""")]

    def offsets(self):
        return self.js("return [...document.querySelectorAll('#messages li.message')].map(li => Number(li.dataset.offset));")

    def data(self, element_id, key):
        """The data-`key` attribute of #`element_id`, or None (absent or empty)."""
        return self.js("return document.getElementById(arguments[0]).dataset[arguments[1]] || null;", element_id, key)

    def users(self, list_id):
        """data-user of every li of #`list_id` (a presence list), top to bottom."""
        return self.js("return [...document.querySelectorAll('#' + arguments[0] + ' li')].map(li => li.dataset.user);", list_id)

    def state(self):
        return self.data("status", "state")

    def node(self):
        return self.data("node", "node")

    def room(self):
        return self.js("const r = document.getElementById('room'); return r.hidden ? null : document.getElementById('room-title').dataset.room;")

    def presence(self):
        return self.users("presence")

    def notice(self):
        return self.js("return document.getElementById('notice').textContent;")

    def typing(self):
        return self.js("return document.getElementById('typing').textContent;")

    def console(self):
        try:
            return [entry["message"] for entry in self.driver.get_log("browser")]
        except Exception:
            return []

    # --- acting ------------------------------------------------------------

    def open(self, url):
        self.driver.get(url)
        wait_until(lambda: self.js("return document.readyState") == "complete", 15, f"{self.label}: page load")

    SIGN_IN_FORM = "sign-in"  # the id of the form with the #name box

    def sign_in(self, name):
        form = self.SIGN_IN_FORM
        wait_until(lambda: self.driver.find_element(By.ID, "name").is_displayed(), 15, f"{self.label}: the {form} form")
        self.driver.find_element(By.ID, "name").send_keys(name)
        self.driver.find_element(By.CSS_SELECTOR, f"#{form} button[type=submit]").click()
        self.wait_connected()

    def wait_connected(self, timeout=30):
        wait_until(lambda: self.state() == "open", timeout, f"{self.label}: connection open")

    def wait_room(self, room, timeout=20):
        wait_until(lambda: self.room() == room, timeout, f"{self.label}: in #{room}")

    def create_room(self, name):
        box = self.driver.find_element(By.ID, "new-room")
        box.clear()
        box.send_keys(name)
        self.driver.find_element(By.CSS_SELECTOR, "#create-room button").click()
        self.wait_room(name)

    def join(self, room):
        wait_until(lambda: self.driver.find_element(By.CSS_SELECTOR, f'#rooms li[data-room="{room}"] button'), 20,
                   f"{self.label}: #{room} in the room list").click()
        self.wait_room(room)

    def type(self, text):
        self.driver.find_element(By.ID, "text").send_keys(text)

    def submit(self, text):
        """Types `text` and presses Send, without waiting for the composer to clear (a refused message is put back)."""
        self.driver.find_element(By.ID, "text").send_keys(text)
        self.driver.find_element(By.ID, "send").click()

    def send(self, text):
        self.submit(text)
        box = self.driver.find_element(By.ID, "text")
        wait_until(lambda: box.get_attribute("value") == "", 10, f"{self.label}: composer cleared after sending")

    def wait_texts(self, expected, timeout=20):
        """Until the room shows exactly `expected` (a shorter prefix is waited out, anything else fails at the end)."""
        wait_until(lambda: self.texts() == expected, timeout, f"{self.label}: messages == {expected}")

    def reload(self):
        self.driver.refresh()
        wait_until(lambda: self.js("return document.readyState") == "complete", 15, f"{self.label}: reload")

    def screenshot(self, name):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path


class BrowserTestCase(unittest.TestCase):
    """The plumbing of a browser test: a fresh Workdir, and what the test started through `start` and `add_page`.
    At the end a screenshot of every page (named by `end_screenshot`) and, when the test failed, each page's
    console and each process's log are printed; the processes are SIGKILLed, newest first."""

    def setUp(self):
        self.workdir = Workdir()
        self.pages = []
        self.processes = []
        self.addCleanup(self.workdir.remove)

    def end_screenshot(self, page, failed):
        return f"{self._testMethodName}-{page.label}-end"

    def tearDown(self):
        result = getattr(self._outcome, "result", None)
        failed = result is not None and any(test is self for test, _ in result.failures + result.errors)
        for page in self.pages:
            try:
                page.screenshot(self.end_screenshot(page, failed))
            except Exception:
                pass
            if failed:
                for line in page.console()[-20:]:
                    print(f"[{page.label} console] {line}")
            page.quit()
        for process in reversed(self.processes):
            if failed:
                print(f"--- {process.name} log ---\n{process.tail()}")
            process.stop(signal.SIGKILL)

    def start(self, process):
        self.processes.append(process)
        return process.start()

    def add_page(self, page):
        """`page`, quit (after its end screenshot) when the test ends."""
        self.pages.append(page)
        return page

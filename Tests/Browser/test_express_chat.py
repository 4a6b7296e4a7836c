"""The Express chat example (Examples/ExpressChat) in headless Chromium: an Express application
behind two `switchboard serve --backend` nodes on Redis. One Express route answers curl-style HTTP
(session cookie) and the browser's WebSocket request frames (signed headers); two users on two
nodes keep chatting through a SIGKILL of one node; the staff room and cookie-less upgrades are
refused. Run by scripts/browser-test.sh (`-k express` for these alone). Skipped only when node,
Express or Chromium are missing; needs .build/debug/switchboard (or $SWITCHBOARD_BIN)."""

import signal
import threading
import time
import unittest

from express_harness import ExpressApp, ExpressChatPage, GatewayNode, require_tools
from harness import BrowserTestCase, Redis, free_port, wait_until


class ExpressChatTestCase(BrowserTestCase):
    @classmethod
    def setUpClass(cls):
        require_tools()

    def end_screenshot(self, page, failed):
        return f"express-{self._testMethodName}-{page.label}-{'failed' if failed else 'end'}"

    def stack(self, **express_env):
        """redis-server, Express and two gateway nodes (node-a, node-b) with the backend bridge."""
        redis = self.start(Redis(self.workdir))
        ports = [free_port(), free_port()]
        express = self.start(ExpressApp(self.workdir, [f"http://127.0.0.1:{p}" for p in ports], **express_env))
        nodes = [self.start(GatewayNode(self.workdir, name, redis, express.port, port))
                 for name, port in zip(("node-a", "node-b"), ports)]
        return express, nodes

    def page(self, label, express, user, gateway):
        """A browser logged in as `user` whose WebSocket starts on node number `gateway`."""
        page = self.add_page(ExpressChatPage(self.workdir, label))
        page.open(f"{express.url}/?gateway={gateway}")
        page.login(user)
        page.wait_room("lobby")
        return page

    def assertShowsOnce(self, page, expected, timeout=30):
        """The page shows exactly `expected` [(from, text)], offsets 1…n, and nothing more comes."""
        wait_until(lambda: page.messages() == expected, timeout, f"{page.label}: messages == {expected}")
        time.sleep(0.5)  # give a duplicate the chance to show
        self.assertEqual(page.messages(), expected, f"{page.label}: every message once, in order")
        self.assertEqual(page.offsets(), list(range(1, len(expected) + 1)), f"{page.label}: offsets without gap or duplicate")


class ExpressChat(ExpressChatTestCase):
    def test_http_and_websocket_frames_reach_the_same_route(self):
        express, (a, _) = self.stack(RATE_WINDOW=60)  # a window the whole test fits in
        ann = self.page("ann", express, "ann", 0)
        self.assertEqual(ann.node(), "node-a")

        # curl-style: Express's own session cookie over plain HTTP.
        bob = express.login("bob")
        status, _, body = express.post("/rooms/lobby/messages", {"text": "from curl"}, bob)
        self.assertEqual((status, body["offset"], body["transport"]), (201, 1, "http"), body)
        # The same route, as a WebSocket request frame through the gateway (signed headers).
        sent = ann.request("POST", "/rooms/lobby/messages", {"text": "from a frame"})
        self.assertEqual((sent["status"], sent["body"]["offset"], sent["body"]["transport"]), (201, 2, "websocket"), sent)
        ann.send("typed in the page")
        self.assertShowsOnce(ann, [("bob", "from curl"), ("ann", "from a frame"), ("ann", "typed in the page")])
        self.assertEqual(ann.notice_status(), None)

        # Validation answers 422 over both transports.
        for text in ("", "   ", 42, "x" * 501):
            status, _, body = express.post("/rooms/lobby/messages", {"text": text}, bob)
            self.assertEqual((status, body["error"]), (422, "invalid_text"), (text, body))
            answer = ann.request("POST", "/rooms/lobby/messages", {"text": text})
            self.assertEqual((answer["status"], answer["body"]["error"]), (422, "invalid_text"), (text, answer))
        self.assertEqual(express.post("/rooms/lobby/messages", None, bob)[0], 422, "no body")
        ann.submit("   ")  # through the page's form: the refusal is shown, the text put back
        wait_until(lambda: ann.notice_status() == "422", 10, "the page shows the 422")
        self.assertIn("1 to 500 characters", ann.notice())
        # No cookie, a forged gateway signature: 401.
        self.assertEqual(express.post("/rooms/lobby/messages", {"text": "anonymous"})[0], 401)
        forged = {"Switchboard-User": "bob", "Switchboard-Timestamp": str(int(time.time())), "Switchboard-Signature": "v1=" + "0" * 64}
        self.assertEqual(express.post("/rooms/lobby/messages", {"text": "forged"}, headers=forged)[0], 401)

        # The rate limit (5 messages per window per user) answers 429 with Retry-After on both.
        carol = express.login("carol")
        answers = [express.post("/rooms/lobby/messages", {"text": f"carol {i}"}, carol) for i in range(6)]
        self.assertEqual([s for s, _, _ in answers], [201] * 5 + [429], [b for _, _, b in answers])
        self.assertEqual(answers[-1][2]["error"], "rate_limited")
        self.assertTrue(1 <= int(answers[-1][1]["Retry-After"]) <= 60, answers[-1][1]["Retry-After"])
        # ann has sent 2 in this window: 3 more pass, then the frames are refused, with retry-after in META.
        burst = ann.call("return Promise.all(args[0].map(async (text) => (await chat.send(text)).status));",
                         [f"ann burst {i}" for i in range(5)])
        self.assertEqual(sorted(burst), [201] * 3 + [429] * 2, burst)
        refused = ann.request("POST", "/rooms/lobby/messages", {"text": "one more"})
        self.assertEqual((refused["status"], refused["body"]["error"]), (429, "rate_limited"), refused)
        self.assertTrue(1 <= int(refused["meta"]["retry-after"]) <= 60, refused)
        # Per user, whatever the transport: ann over HTTP is limited too.
        self.assertEqual(express.post("/rooms/lobby/messages", {"text": "ann over http"}, express.login("ann"))[0], 429)

        delivered = [("bob", "from curl"), ("ann", "from a frame"), ("ann", "typed in the page")]
        delivered += [("carol", f"carol {i}") for i in range(5)]
        accepted = [("ann", f"ann burst {i}") for i, s in enumerate(burst) if s == 201]
        wait_until(lambda: len(ann.messages()) == len(delivered) + 3, 20, "ann sees the 8 + 3 accepted messages")
        self.assertEqual(ann.messages()[:len(delivered)], delivered)
        self.assertEqual(sorted(ann.messages()[len(delivered):]), accepted, "the burst's accepted messages, once each")
        self.assertShowsOnce(ann, ann.messages())

    def test_two_users_on_two_nodes_through_a_node_kill(self):
        express, (a, b) = self.stack(RATE_LIMIT=1000)
        ann = self.page("ann", express, "ann", 0)
        bob = self.page("bob", express, "bob", 1)
        self.assertEqual((ann.node(), bob.node()), ("node-a", "node-b"))
        wait_until(lambda: ann.members() == ["ann", "bob"] and bob.members() == ["ann", "bob"], 15, "presence across nodes")
        carl = express.login("carl")

        ann.send_and_wait("ann 1")
        bob.send_and_wait("bob 1")
        self.assertEqual(express.post("/rooms/lobby/messages", {"text": "http 1"}, carl)[0], 201)
        before = [("ann", "ann 1"), ("bob", "bob 1"), ("carl", "http 1")]
        for page in (ann, bob):
            wait_until(lambda: page.messages() == before, 20, f"{page.label}: the first three")

        # HTTP posts keep coming (through Express, which publishes on whichever node answers)
        # while node-a dies under ann's WebSocket and bob keeps typing on node-b.
        http_sent, http_answers = [], []

        def post_over_http():
            for i in range(2, 12):
                text = f"http {i}"
                http_answers.append(express.post("/rooms/lobby/messages", {"text": text}, carl)[0])
                http_sent.append(("carl", text))
                time.sleep(0.15)

        ann.record_states()
        poster = threading.Thread(target=post_over_http, daemon=True)
        poster.start()
        bob.send_and_wait("bob 2")
        a.stop(signal.SIGKILL)
        # Sent as the node dies: lost with the socket or queued, the client sends it (again,
        # same idempotency key) once connected to node-b; it is published once.
        ann.send("ann 2, sent as node-a died")
        bob.send_and_wait("bob 3")
        wait_until(lambda: "reconnecting" in ann.states(), 15, "ann's page noticed node-a died")
        bob.send_and_wait("bob 4")
        poster.join(timeout=30)
        self.assertFalse(poster.is_alive())
        self.assertEqual(http_answers, [201] * 10, "every HTTP post published, node-a dead or not")
        ann.wait_connected(timeout=45)
        self.assertEqual(ann.node(), "node-b", "ann's page reconnected to the other node")
        bob.send_and_wait("bob 5")

        sent = before + [("bob", f"bob {i}") for i in range(2, 6)] + http_sent + [("ann", "ann 2, sent as node-a died")]
        total = len(sent)
        for page in (ann, bob):
            wait_until(lambda: len(page.messages()) >= total, 45, f"{page.label}: all {total} messages")
        time.sleep(0.5)
        shown = ann.messages()
        self.assertEqual(bob.messages(), shown, "both pages show the same messages in the same order")
        self.assertEqual(sorted(shown), sorted(sent), "every message exactly once")
        for page in (ann, bob):
            self.assertEqual(page.offsets(), list(range(1, total + 1)), f"{page.label}: offsets without gap or duplicate")
        for sender in ("ann", "bob", "carl"):
            self.assertEqual([m for m in shown if m[0] == sender], [m for m in sent if m[0] == sender], f"{sender}'s in the order sent")
        wait_until(lambda: ann.members() == ["ann", "bob"], 20, "ann's presence back, from node-b")

    def test_the_staff_room_is_for_admins_and_upgrades_need_the_cookie(self):
        express, (a, b) = self.stack()
        bob = self.page("bob", express, "bob", 0)
        admin = self.page("admin", express, "admin", 1)

        # The subscribe hook refuses bob's SUB to /rooms/staff (and its presence stream).
        refusals = bob.call("""
            const refused = (stream) => new Promise((resolve) => {
              const off = chat.client.on('error', (e) => {
                if (e.code === 'subscribe' && e.stream === stream) { off(); resolve({stream, status: e.status, ended: e.ended, body: JSON.parse(e.body)}); }
              });
              chat.client.subscribe(stream, () => {});
            });
            return [await refused('/rooms/staff'), await refused('/presence/rooms/staff')];""")
        for refusal in refusals:
            self.assertEqual((refusal["status"], refusal["ended"], refusal["body"]["error"]), (403, True, "forbidden"), refusal)
        # Through the page: the room is not shown, the refusal is.
        bob.click_room("staff")
        wait_until(lambda: bob.notice_status() == "403", 10, "bob's page shows the 403")
        self.assertEqual(bob.room(), "lobby")
        self.assertEqual(bob.request("POST", "/rooms/staff/messages", {"text": "let me in"})["status"], 403)
        self.assertEqual(bob.request("POST", "/rooms/lobby/announcements", {"text": "hear ye"})["status"], 403, "admins only")
        bob_cookie = express.login("bob")
        self.assertEqual(express.get("/rooms/staff/info", bob_cookie)[0], 403)
        self.assertEqual(express.post("/rooms/staff/messages", {"text": "let me in"}, bob_cookie)[0], 403)

        # The admin may: the room, its messages, announcements.
        admin.click_room("staff")
        admin.wait_room("staff")
        admin.send("staff only")
        self.assertEqual(admin.request("POST", "/rooms/staff/announcements", {"text": "meeting at 3"})["status"], 201)
        self.assertShowsOnce(admin, [("admin", "staff only"), ("admin", "meeting at 3")])
        self.assertEqual(admin.js("return document.querySelectorAll('#messages li.announcement').length"), 1)
        self.assertEqual(bob.texts(), [], "nothing of #staff reached bob's lobby")

        # Upgrades: the gateway asks Express's connect hook, which wants a live session cookie.
        origin = express.url
        self.assertEqual(a.upgrade(cookie=bob_cookie, origin=origin)[0], 101)
        status, body = a.upgrade(origin=origin)
        self.assertEqual(status, 401, body)
        self.assertIn("no valid session cookie", body)
        self.assertEqual(b.upgrade(cookie="sid=forged", origin=origin)[0], 401)
        self.assertEqual(b.upgrade(cookie=bob_cookie, origin="http://evil.example")[0], 403, "another site's page")
        self.assertEqual(express.post("/logout", None, bob_cookie)[0], 204)
        self.assertEqual(a.upgrade(cookie=bob_cookie, origin=origin)[0], 401, "logged out")
        # A browser without the cookie: the upgrade fails before 'open' (1006), the page never connects.
        fresh = ExpressChatPage(self.workdir, "nobody")
        self.pages.append(fresh)
        fresh.open(express.url + "/config")
        closed = fresh.call("""
            const ws = new WebSocket(args[0], ['switchboard.v1']);
            return await new Promise((resolve) => {
              ws.onopen = () => resolve('open');
              ws.onclose = (e) => resolve(e.code);
            });""", f"ws://127.0.0.1:{a.port}/ws")
        self.assertEqual(closed, 1006)


if __name__ == "__main__":
    unittest.main(verbosity=2)

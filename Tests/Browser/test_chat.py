"""The chat example in real headless Chromium: two users, reconnects, reloads, two nodes
behind nginx. Run by scripts/browser-test.sh (needs .build/debug/switchboard-chat)."""

import signal
import time
import unittest

from selenium.webdriver.common.by import By

from harness import API_KEY, BrowserTestCase, ChatNode, ChatPage, Nginx, Redis, http, wait_until


class ChatTestCase(BrowserTestCase):
    def page(self, label, url, user=None):
        page = self.add_page(ChatPage(self.workdir, label))
        page.open(url)
        if user:
            page.sign_in(user)
        return page


class SingleNode(ChatTestCase):
    def test_two_users_chat_in_a_room_with_presence_and_typing(self):
        node = self.start(ChatNode(self.workdir))
        ann = self.page("ann", node.url, "ann")
        bob = self.page("bob", node.url, "bob")
        ann.wait_room("lobby")
        bob.wait_room("lobby")
        wait_until(lambda: ann.presence() == ["ann", "bob"], 15, "ann sees ann and bob in the lobby")

        ann.create_room("team")
        bob.join("team")
        wait_until(lambda: ann.presence() == ["ann", "bob"] and bob.presence() == ["ann", "bob"], 15, "both in #team")
        wait_until(lambda: bob.presence() == ["ann", "bob"], 15, "bob sees both in #team")

        bob.type("hel")
        wait_until(lambda: "bob is typing" in ann.typing(), 10, "ann sees bob typing")
        bob.driver.find_element("id", "text").clear()

        ann.send("hello bob")
        bob.wait_texts(["hello bob"])
        bob.send("hi ann, <b>markup</b> stays text")
        ann.send("great")
        expected = ["hello bob", "hi ann, <b>markup</b> stays text", "great"]
        ann.wait_texts(expected)
        bob.wait_texts(expected)
        self.assertEqual(ann.messages()[1][0], "bob")
        self.assertEqual(ann.js("return document.querySelectorAll('#messages b').length"), 0, "markup is not rendered")
        self.assertEqual(ann.offsets(), sorted(set(ann.offsets())), "offsets once each, increasing")

        # Leaving: bob's presence goes from ann's list; the lobby still lists both rooms.
        bob.driver.find_element("id", "leave").click()
        wait_until(lambda: ann.presence() == ["ann"], 15, "ann sees bob leave #team")
        ann.send("bob left")
        ann.wait_texts(expected + ["bob left"])
        # A newcomer's join replays the room's history from its log.
        bob.join("team")
        bob.wait_texts(expected + ["bob left"])
        wait_until(lambda: ann.presence() == ["ann", "bob"], 15, "bob is back in #team")
        ann.screenshot("chat-ann")
        bob.screenshot("chat-bob")

    def test_a_reload_resumes_in_the_same_room_without_duplicates(self):
        node = self.start(ChatNode(self.workdir))
        ann = self.page("ann", node.url, "ann")
        bob = self.page("bob", node.url, "bob")
        ann.create_room("reload")
        bob.join("reload")
        sent = [f"before reload {i}" for i in range(1, 4)]
        for text in sent:
            bob.send(text)
        ann.wait_texts(sent)

        ann.reload()
        ann.wait_connected()
        ann.wait_room("reload")
        ann.wait_texts(sent)
        bob.send("after reload")
        ann.wait_texts(sent + ["after reload"])
        time.sleep(0.5)  # nothing more may arrive: give a duplicate the chance to show
        self.assertEqual(ann.texts(), sent + ["after reload"])
        self.assertEqual(ann.offsets(), sorted(set(ann.offsets())))
        ann.screenshot("reload-ann")

        # A server-side disconnect (the gateway's API, close code 4403) is final: the page
        # says so and stays offline; a reload connects again, in the same room.
        status, _, _ = http("POST", node.url + "/api/users/ann/disconnect", headers={"X-API-Key": API_KEY})
        self.assertEqual(status, 202)
        wait_until(lambda: ann.state() == "closed", 15, "ann's page closed after the API disconnect")
        self.assertIn("4403", ann.notice())
        ann.reload()
        ann.wait_connected()
        ann.wait_room("reload")
        ann.wait_texts(sent + ["after reload"])

    def test_input_is_validated_and_messages_are_rate_limited(self):
        node = self.start(ChatNode(self.workdir, extra=["--message-burst", "3", "--message-rate", "0.2"]))
        url = node.url
        self.assertEqual(http("POST", url + "/auth/sign-in", {"name": "no spaces"})[0], 400)
        self.assertEqual(http("POST", url + "/auth/sign-in", {"name": "x" * 25})[0], 400)
        self.assertEqual(http("POST", url + "/auth/sign-in", {"nom": "ann"})[0], 400)
        status, _, issued = http("POST", url + "/auth/sign-in", {"name": "ann"})
        self.assertEqual(status, 200)
        auth = {"Authorization": "Bearer " + issued["token"]}
        self.assertEqual(http("GET", url + "/me")[0], 401, "routes need a token")
        self.assertEqual(http("GET", url + "/me", headers=auth)[2], {"user": "ann", "room": None})
        self.assertEqual(http("POST", url + "/rooms", {"name": "Bad Room!"}, auth)[0], 400)
        self.assertEqual(http("POST", url + "/rooms", {"name": "a" * 33}, auth)[0], 400)
        self.assertEqual(http("POST", url + "/rooms", {"name": " Ops "}, auth)[:3:2], (201, {"room": "ops"}))
        self.assertEqual(http("POST", url + "/rooms", {"name": "ops"}, auth)[0], 200, "exists already")
        self.assertEqual(http("POST", url + "/rooms/nope/join", None, auth)[0], 404)

        post = lambda text: http("POST", url + "/rooms/ops/messages", {"text": text}, auth)
        self.assertEqual(post("   ")[0], 400)
        self.assertEqual(post("x" * 501)[0], 400)
        status, _, body = post("a\u0000b\u202e\u0007 c\nd <i>e</i>")
        self.assertEqual(status, 201, body)
        _, _, history = http("GET", url + "/rooms/ops/messages", headers=auth)
        self.assertEqual([m["text"] for m in history["messages"]], ["ab c d <i>e</i>"],
                         "control and bidi characters stripped; HTML kept as text (the page escapes)")
        statuses = [post(f"flood {i}") for i in range(6)]
        limited = [s for s in statuses if s[0] == 429]
        self.assertTrue(limited, [s[0] for s in statuses])
        self.assertEqual(limited[0][2]["error"], "rate_limited")
        self.assertEqual(limited[0][1]["Retry-After"], "1")
        # The bucket is per user: bob may still post. The same idempotency key is appended
        # once (what the page's resend after a reconnect relies on).
        bob = {"Authorization": "Bearer " + http("POST", url + "/auth/sign-in", {"name": "bob"})[2]["token"], "Idempotency-Key": "same-1"}
        first = http("POST", url + "/rooms/ops/messages", {"text": "once"}, bob)
        again = http("POST", url + "/rooms/ops/messages", {"text": "once"}, bob)
        self.assertEqual((first[0], first[2]["duplicate"]), (201, False), first)
        self.assertEqual((again[0], again[2]["duplicate"], again[2]["offset"]), (201, True, first[2]["offset"]), again)
        _, _, history = http("GET", url + "/rooms/ops/messages", headers=auth)
        self.assertEqual([m["text"] for m in history["messages"]].count("once"), 1)

    def test_input_patterns_are_valid_and_enforced_by_the_browser(self):
        # Browsers compile `pattern` with the `v` flag: an invalid one (an unescaped '-' in a
        # class) is ignored without a word, and the input accepts anything.
        node = self.start(ChatNode(self.workdir))
        page = self.page("ann", node.url)
        wait_until(lambda: page.driver.find_element(By.ID, "name").is_displayed(), 15, "the sign-in form")
        inputs = page.js("""
            const mismatch = (input, value) => { input.value = value; return input.validity.patternMismatch; };
            return [...document.querySelectorAll('input[pattern]')].map(input => {
                let compiles = true;
                try { new RegExp('^(?:' + input.pattern + ')$', 'v'); } catch (error) { compiles = String(error); }
                const result = {id: input.id, compiles, space: mismatch(input, 'ann smith'), markup: mismatch(input, '<b>x'),
                                good: mismatch(input, 'ann_1-x')};
                input.value = '';
                return result;
            });""")
        self.assertEqual(sorted(i["id"] for i in inputs), ["name", "new-room"], inputs)
        for i in inputs:
            self.assertIs(i["compiles"], True, i)
            self.assertEqual((i["space"], i["markup"], i["good"]), (True, True, False), i)

        # The form is not submitted with a bad name; a good one signs in.
        name = page.driver.find_element(By.ID, "name")
        name.send_keys("no spaces")
        page.driver.find_element(By.CSS_SELECTOR, "#sign-in button[type=submit]").click()
        self.assertFalse(page.js("return document.getElementById('sign-in').checkValidity();"))
        time.sleep(0.5)  # give a wrongly accepted submit the chance to sign in
        self.assertTrue(name.is_displayed(), "still on the sign-in form")
        self.assertIsNone(page.js("return sessionStorage.getItem('chat.user');"))
        name.clear()
        page.sign_in("ann_1-x")
        page.wait_room("lobby")

    def test_the_favicon_is_served(self):
        node = self.start(ChatNode(self.workdir))
        page = self.page("ann", node.url, "ann")
        href = page.js("const link = document.querySelector('link[rel~=icon]'); return link && link.href;")
        self.assertEqual(href, node.url + "/favicon.svg")
        results = page.driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            Promise.all(arguments[0].map(url => fetch(url, {cache: 'no-store'})
                .then(r => r.text().then(body => ({url, status: r.status, type: r.headers.get('content-type'), body})))
                .catch(error => ({url, status: 0, type: null, body: String(error)}))))
              .then(done);""", [href, "/favicon.ico"])
        svg, ico = results
        self.assertEqual(svg["status"], 200, svg)
        self.assertTrue((svg["type"] or "").startswith("image/svg+xml"), svg)
        self.assertIn("<svg", svg["body"])
        self.assertIn(ico["status"], (200, 204), f"/favicon.ico (asked for by browsers without the link): {ico}")
        not_found = [line for line in page.console() if "status of 404" in line]
        self.assertEqual(not_found, [], "no 404 in the browser log")


class Cluster(ChatTestCase):
    def test_the_page_reconnects_after_its_node_restarts_and_misses_nothing(self):
        redis = self.start(Redis(self.workdir))
        a = self.start(ChatNode(self.workdir, "node-a", redis))
        b = self.start(ChatNode(self.workdir, "node-b", redis))
        ann = self.page("ann", a.url, "ann")
        bob = self.page("bob", b.url, "bob")
        ann.wait_room("lobby")
        bob.wait_room("lobby")
        self.assertEqual((ann.node(), bob.node()), ("node-a", "node-b"))
        bob.send("before")
        ann.wait_texts(["before"])

        a.stop(signal.SIGKILL)  # the node dies with ann's connection
        wait_until(lambda: ann.state() != "open", 15, "ann's page notices the lost connection")
        during = [f"while ann was away {i}" for i in range(1, 4)]
        for text in during:
            bob.send(text)
        ann.send("sent by ann while offline")  # queued by the client, sent after the reconnect
        self.assertEqual(ann.texts(), ["before"])

        a.start()  # same port, same Redis
        ann.wait_connected(timeout=45)
        expected = ["before", *during, "sent by ann while offline"]
        ann.wait_texts(expected, timeout=30)
        bob.wait_texts(expected, timeout=30)
        time.sleep(0.5)
        self.assertEqual(ann.texts(), expected, "every message once, in order")
        self.assertEqual(bob.texts(), expected)
        self.assertEqual(ann.room(), "lobby")
        ann.screenshot("reconnect-ann")

    def test_a_message_typed_while_the_node_is_down_shows_as_pending_then_as_sent(self):
        redis = self.start(Redis(self.workdir))
        a = self.start(ChatNode(self.workdir, "node-a", redis))
        ann = self.page("ann", a.url, "ann")
        ann.wait_room("lobby")
        ann.send("online first")
        ann.wait_texts(["online first"])
        wait_until(lambda: ann.local_messages() == [], 10, "the send while connected settled")

        a.stop(signal.SIGKILL)
        wait_until(lambda: ann.state() != "open", 15, "ann's page notices the lost connection")
        text = "typed while the node is down"
        # Record what the list shows for this text after every change: its state, and copies.
        ann.js("""
            const text = arguments[0];
            const seen = window.__pending = {states: [], maxCopies: 0};
            const copies = () => [...document.querySelectorAll('#messages li')]
                .filter(li => li.querySelector('.text') && li.querySelector('.text').textContent === text);
            new MutationObserver(() => {
                const found = copies();
                seen.maxCopies = Math.max(seen.maxCopies, found.length);
                const li = found[0];
                const state = !li ? 'none' : li.classList.contains('local') ? li.dataset.status : 'delivered';
                if (seen.states[seen.states.length - 1] !== state) seen.states.push(state);
            }).observe(document.getElementById('messages'), {subtree: true, childList: true, attributes: true, characterData: true});
            """, text)
        ann.send(text)
        wait_until(lambda: ann.local_messages() == [(text, "pending")], 2, "the message shown as pending at once")
        self.assertEqual(ann.js("return document.querySelector('#messages li.local .status').textContent;"), "sending…")
        self.assertLess(float(ann.js("return getComputedStyle(document.querySelector('#messages li.local')).opacity;")), 1,
                        "greyed while pending")
        self.assertEqual(ann.texts(), ["online first"], "not shown as delivered")
        time.sleep(1)
        self.assertEqual(ann.local_messages(), [(text, "pending")], "still pending while the node is down")

        a.start()  # same port, same Redis: the session resumes, the client resends the POST
        ann.wait_connected(timeout=45)
        ann.wait_texts(["online first", text], timeout=30)
        wait_until(lambda: ann.local_messages() == [], 10, "the pending entry replaced by the delivered message")
        time.sleep(0.5)  # give a duplicate the chance to show
        self.assertEqual(ann.texts(), ["online first", text], "shown once")
        self.assertEqual(ann.local_messages(), [])
        seen = ann.js("return window.__pending;")
        self.assertEqual(seen["maxCopies"], 1, seen)
        self.assertEqual(seen["states"][0], "pending", seen)
        self.assertEqual(seen["states"][-1], "delivered", seen)
        self.assertTrue(set(seen["states"]) <= {"pending", "sent", "delivered"}, seen)
        # Stored once, whatever was resent: the room's stream holds exactly two offsets. (Its
        # history may already be trimmed by ann's acks, the only subscriber: read the top.)
        self.assertEqual(ann.offsets(), [1, 2])
        token = http("POST", a.url + "/auth/sign-in", {"name": "ann"})[2]["token"]
        _, _, history = http("GET", a.url + "/rooms/lobby/messages", headers={"Authorization": "Bearer " + token})
        if "messages" in history:
            self.assertEqual([m["text"] for m in history["messages"]], ["online first", text])
        else:
            self.assertIn("(top 2)", history.get("reason", ""), history)
        ann.screenshot("pending-then-sent-ann")

    def test_users_on_different_nodes_behind_nginx_chat(self):
        redis = self.start(Redis(self.workdir))
        nodes = [self.start(ChatNode(self.workdir, f"node-{i}", redis)) for i in (1, 2)]
        balancer = self.start(Nginx(self.workdir, nodes))
        ann = self.page("ann", balancer.url, "ann")
        bob = self.page("bob", balancer.url, "bob")
        ann.wait_room("lobby")
        bob.wait_room("lobby")
        # No sticky sessions: which node a socket lands on is the balancer's choice. Reload
        # bob until the two are on different nodes (a reload resumes bob's session there).
        for _ in range(12):
            if ann.node() != bob.node():
                break
            bob.reload()
            bob.wait_connected()
            bob.wait_room("lobby")
        self.assertNotEqual(ann.node(), bob.node(), "the balancer never put bob on the other node")
        wait_until(lambda: ann.presence() == ["ann", "bob"] and bob.presence() == ["ann", "bob"], 20,
                   "presence across nodes")
        ann.create_room("across")
        bob.join("across")
        ann.send(f"from {ann.node()}")
        bob.send(f"from {bob.node()}")
        expected = [f"from {ann.node()}", f"from {bob.node()}"]
        ann.wait_texts(expected)
        bob.wait_texts(expected)
        ann.screenshot("nginx-ann")
        bob.screenshot("nginx-bob")


if __name__ == "__main__":
    unittest.main(verbosity=2)

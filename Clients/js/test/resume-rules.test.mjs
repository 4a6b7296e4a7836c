// The shared resume rules (Tests/Fixtures/resume-rules.json) against the JS StreamBook; the
// Swift client runs the same cases (Tests/SwitchboardClientTests/ResumeRulesTests.swift).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { StreamBook } from '../stream-book.js';

const rules = JSON.parse(readFileSync(new URL('../../../Tests/Fixtures/resume-rules.json', import.meta.url), 'utf8'));

test('resume rules: the fixture has cases', () => {
  assert.ok(rules.cases.length > 0);
});

for (const rule of rules.cases) {
  test(`resume rule: ${rule.name}`, () => {
    const { stream } = rules;
    const book = new StreamBook();
    book.entry(stream).handlers.add(() => {}); // the application is subscribed
    if (rule.start.last !== null) book.seed(stream, rule.start.last, rule.start.epoch, rule.start.tag);
    let nextR = 1;
    let awaited = null; // `r` of the SUB a solicited reply answers
    const subscribe = (sends, at) => {
      awaited = nextR++;
      assert.deepEqual(book.prepareSubscribe(stream, awaited), sends, `${at}: SUB parameters`);
    };

    rule.events.forEach((event, index) => {
      const at = `event ${index + 1}`;
      if (event.push) {
        const { id, epoch, tag } = event.push;
        let decision = book.push(stream, id, epoch, tag);
        const notRecovered = decision === 'notRecovered';
        if (notRecovered) decision = book.push(stream, id, epoch, tag); // reported, then offered again
        assert.equal(decision, event.decision, at);
        assert.equal(notRecovered, event.notRecovered ?? false, `${at}: not recovered`);
        if (decision === 'resubscribe') subscribe(event.sends, at);
      } else if (event.subReply) {
        const { status, id, epoch, solicited } = event.subReply;
        const outcome = book.subscribeReply(stream, status, id, epoch, solicited ? awaited : null);
        // 'kept': an unsolicited reply that changed nothing, so nothing to save.
        assert.equal(outcome === 'kept' ? 'subscribed' : outcome, event.decision, at);
      } else if (event.subscribe) {
        subscribe(event.sends, at);
      } else if (event.connectionLost) {
        book.connectionLost();
      } else {
        assert.fail(`${at}: unknown event ${JSON.stringify(event)}`);
      }
      const s = book.get(stream);
      assert.deepEqual({ last: s.last, epoch: s.epoch, tag: s.tag }, event.then, `${at}: position`);
    });
  });
}

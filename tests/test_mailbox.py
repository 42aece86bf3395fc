"""The mailbox alone (no sockets): a batch still being written by an earlier
request of a client holds back the next take, so that what that write puts
back, if it fails, still goes out first and in order."""
import gevent
import pytest

from flask_atmosphere.mailbox import CloseRequest, Mailbox, Outbound


def seqs(batch):
    return [seq for seq, _ in batch]


def mailbox_with(*texts):
    mailbox = Mailbox(10, 1 << 20, history_messages=10, history_bytes=1 << 20)
    for text in texts:
        mailbox.put(Outbound(text))
    return mailbox


def test_a_take_waits_for_the_batch_still_going_out_and_gets_what_it_puts_back_first():
    mailbox = mailbox_with("one")
    earlier = mailbox.take(0)  # an old request's write, not done yet
    mailbox.put(Outbound("two"))
    newer = gevent.spawn(mailbox.take, None)  # the client came back on a new request
    gevent.sleep(0)
    assert not newer.ready()  # "two" would overtake "one"
    mailbox.requeue(earlier)  # the old write failed
    assert seqs(newer.get(timeout=1)) == [1, 2]


def test_a_take_waits_for_the_batch_still_going_out_and_gets_the_rest_once_it_is_written():
    mailbox = mailbox_with("one")
    mailbox.take(0)
    mailbox.put(Outbound("two"))
    newer = gevent.spawn(mailbox.take, None)
    gevent.sleep(0)
    assert not newer.ready()
    mailbox.written()
    assert seqs(newer.get(timeout=1)) == [2]


def test_a_take_that_runs_out_of_time_behind_a_batch_going_out_takes_nothing():
    mailbox = mailbox_with("one")
    mailbox.take(0)
    mailbox.put(Outbound("two"))
    assert mailbox.take(0) == []
    assert mailbox.take(0.01) == []
    mailbox.written()
    assert seqs(mailbox.take(0)) == [2]


def test_an_empty_take_does_not_end_the_batch_going_out():
    mailbox = mailbox_with("one")
    mailbox.take(0)
    assert mailbox.take(0) == []
    assert mailbox.in_flight and not mailbox.idle


def test_a_closed_mailbox_says_so_even_while_a_batch_is_going_out():
    mailbox = mailbox_with("one")
    mailbox.take(0)
    mailbox.put(Outbound("two"))
    mailbox.close(CloseRequest(1008, "slow consumer", drain=False))
    assert mailbox.take(None) is None


def test_a_draining_close_still_waits_for_the_batch_going_out_then_delivers_the_rest():
    mailbox = mailbox_with("one")
    mailbox.take(0)
    mailbox.put(Outbound("two"))
    mailbox.close(CloseRequest(1000, "bye", drain=True))
    newer = gevent.spawn(mailbox.take, None)
    gevent.sleep(0)
    assert not newer.ready()
    mailbox.written()
    assert seqs(newer.get(timeout=1)) == [2]
    assert mailbox.take(None) is None  # then the goodbye


def test_a_resume_leaves_the_batch_going_out_in_flight_and_queues_nothing_twice():
    mailbox = mailbox_with("one")
    mailbox.keep = True  # an SSE client: it can say how far it got
    earlier = mailbox.take(0)  # an old SSE request's write, not done yet
    mailbox.put(Outbound("two"))
    mailbox.resume(0)  # the browser came back: it had nothing
    assert mailbox.take(0) == []  # "one" is still going out on the old request
    mailbox.requeue(earlier)  # which failed
    assert seqs(mailbox.take(0)) == [1, 2]


def test_a_snapshot_restored_elsewhere_goes_on_where_the_client_is():
    """A handover: what was sent (kept) and what was not (queued) go on in
    another mailbox, with their sequence numbers; a resume there re-sends
    just what the client had not got."""
    old = mailbox_with("a", "b", "c")
    old.keep = True
    taken = old.take(0, limit=2)  # "a" and "b" sent, "c" still queued
    old.written()
    snapshot = old.snapshot()
    assert snapshot == {"next": 4, "kept": [[1, "a"], [2, "b"]], "queued": [[3, "c"]]}
    new = Mailbox(10, 1 << 20, history_messages=10, history_bytes=1 << 20)
    new.keep = True
    new.restore(snapshot)
    assert new.resume(1) == 0  # the client got "a" only
    assert [(seq, m.text) for seq, m in new.take(0)] == [(2, "b"), (3, "c")]
    new.written()
    assert new.put(Outbound("d")) and seqs(new.take(0)) == [4]  # numbering goes on
    assert seqs(taken) == [1, 2]


def test_a_snapshot_restored_where_no_history_is_kept_sends_only_the_unsent():
    new = Mailbox(10, 1 << 20)
    new.restore({"next": 4, "kept": [[1, "a"], [2, "b"]], "queued": [[3, "c"]]})
    assert [(seq, m.text) for seq, m in new.take(0)] == [(3, "c")]


def test_a_stale_checkpoint_resumed_at_the_clients_offset_sends_nothing_twice():
    """A checkpoint taken before the client got "b" and "c" (its process
    then died): the client's offset says it got them, so neither the
    history nor the queue sends them again."""
    new = Mailbox(10, 1 << 20)
    new.restore({"next": 4, "kept": [], "queued": [[2, "b"], [3, "c"]]})
    assert new.put(Outbound("d"))  # published after the checkpoint: replayed
    assert new.resume(3) == 0
    assert [(seq, m.text) for seq, m in new.take(0)] == [(4, "d")]
    assert new.queued_bytes == 0


def test_what_is_not_a_snapshot_is_refused_and_changes_nothing():
    mailbox = mailbox_with("x")
    for bad in (None, {}, {"next": "n", "kept": [], "queued": []},
                {"next": 2, "kept": [[1]], "queued": []}):
        with pytest.raises(ValueError, match="not a mailbox snapshot"):
            mailbox.restore(bad)
    assert seqs(mailbox.take(0)) == [1] and mailbox.next_seq == 2

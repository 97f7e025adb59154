"""The mailbox between webhooks, the health page and the scheduler: requests that add up are never lost."""

import multiprocessing

from core.mailbox import REBUILD, STOCK, Mailbox


def test_two_stock_requests_join_into_the_earliest_moment_and_webhook(tmp_path):
    mailbox = Mailbox(tmp_path)
    mailbox.post(STOCK, "main", changed_since="2026-03-02 11:05:00", received_at=20.0)
    mailbox.post(STOCK, "main", changed_since="2026-03-02 11:00:00", received_at=30.0)
    payload = mailbox.note(STOCK, "main").payload
    assert (payload["changed_since"], payload["received_at"]) == ("2026-03-02 11:00:00", 20.0)
    mailbox.post(STOCK, "other", changed_since=None, received_at=5.0)
    assert mailbox.note(STOCK, "other").payload["changed_since"] is None


def test_a_deletion_keeps_its_full_sync_when_an_update_follows(tmp_path):
    mailbox = Mailbox(tmp_path)
    mailbox.post(REBUILD, "main", feeds=["main"], full=True)
    mailbox.post(REBUILD, "main", feeds=["rest"], full=False)
    note = mailbox.note(REBUILD, "main")
    assert (note.payload["feeds"], note.payload["full"]) == (["main", "rest"], True)


def test_a_request_arriving_as_the_scheduler_takes_the_note_stays(tmp_path):
    """The scheduler read the note, a webhook asked again, then the scheduler took what it read: the newer
    request (joined with the one read) must wait for the next poll, not vanish with it."""
    mailbox = Mailbox(tmp_path)
    mailbox.post(REBUILD, "main", feeds=["main"], full=False)
    read = mailbox.note(REBUILD, "main")
    mailbox.post(REBUILD, "main", feeds=["main"], full=True)  # a deletion, just now
    assert mailbox.take(read) is False
    waiting = mailbox.note(REBUILD, "main")
    assert waiting.payload["full"] is True
    assert mailbox.take(waiting) is True and mailbox.notes() == []


def _post_feeds(data_dir, prefix: str, count: int) -> None:
    mailbox = Mailbox(data_dir)
    for n in range(count):
        mailbox.post(REBUILD, "main", feeds=[f"{prefix}{n}"], full=n == count - 1 and prefix == "a")


def test_webhooks_in_two_workers_at_once_lose_no_request(tmp_path):
    """gunicorn workers post for one account at the same moment: every feed named and the deletion's full sync
    are in the note the scheduler finds."""
    processes = [multiprocessing.get_context("fork").Process(target=_post_feeds, args=(tmp_path, prefix, 150))
                 for prefix in ("a", "b")]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0, 0]
    note = Mailbox(tmp_path).note(REBUILD, "main")
    assert len(note.payload["feeds"]) == 300 and note.payload["full"] is True

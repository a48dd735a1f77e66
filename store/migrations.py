"""The schema, as sqlite-utils migrations applied in order at start-up."""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("threadbot")


@migrations()
def m001_events_and_threads(db: Database) -> None:
    # The event log is insert-only: a thread's whole state is its rows, in seq
    # order. (thread_id, seq) as the primary key is what makes an append
    # optimistic: two writers racing for the same next seq cannot both win.
    db.table("events").create(
        {
            "thread_id": str,
            "seq": int,
            "type": str,
            "key": str,
            "body": str,
        },
        pk=("thread_id", "seq"),
        not_null={"thread_id", "seq", "type", "body"},
    )
    # A delivery key (Slack event_id, email Message-ID, Idempotency-Key) is
    # stored once: a redelivery fails this index and becomes a no-op.
    db.table("events").create_index(["key"], unique=True, index_name="events_key")

    # The only mutable rows: a projection of each thread's events for listing,
    # written in the same transaction as the events and rebuildable from them.
    db.table("threads").create(
        {
            "id": str,
            "status": str,
            "title": str,
            "origin": str,
            "created_at": str,
            "updated_at": str,
            "last_seq": int,
            "parent_id": str,
            "parent_seq": int,
        },
        pk="id",
        not_null={"id", "status", "title", "origin", "created_at", "updated_at", "last_seq"},
    )
    db.table("threads").create_index(["status", "updated_at"], index_name="threads_status")

    # Routing projection: a platform reference (Slack thread, email
    # Message-ID) to the thread it belongs to.
    db.table("routes").create(
        {"ref": str, "thread_id": str},
        pk="ref",
        not_null={"ref", "thread_id"},
    )


@migrations()
def m002_meta(db: Database) -> None:
    # Settings the deployment generates once and must keep (a signing secret
    # when none is configured); mutable, and not part of any thread.
    db.table("meta").create({"key": str, "value": str}, pk="key", not_null={"key", "value"})


@migrations()
def m003_leases(db: Database) -> None:
    # Which process runs a thread right now. Mutable by nature; a lease that
    # is not renewed expires, so a dead process's threads are taken over.
    db.table("leases").create(
        {"thread_id": str, "owner": str, "expires_at": float},
        pk="thread_id",
        not_null={"thread_id", "owner", "expires_at"},
    )


@migrations()
def m004_undelivered(db: Database) -> None:
    # Part of the projection: whether a thread holds a question, approval
    # request or answer not yet delivered, so a restart finds them at once.
    db.table("threads").add_column("undelivered", int, not_null_default=0)
    db.table("threads").create_index(["undelivered"], index_name="threads_undelivered")


@migrations()
def m005_waiting(db: Database) -> None:
    # Part of the projection: what a waiting thread waits for, in a few words,
    # so that a list of threads can say it without reading their events.
    db.table("threads").add_column("waiting", str, not_null_default="")


@migrations()
def m006_partial_indexes(db: Database) -> None:
    # Most events carry no delivery key and most threads have nothing left to
    # deliver: index only the rows that do, so that an append writes two
    # pages fewer (four instead of six) and the log's commits stay small.
    db.execute("DROP INDEX events_key")
    db.execute("CREATE UNIQUE INDEX events_key ON events (key) WHERE key IS NOT NULL")
    db.execute("DROP INDEX threads_undelivered")
    db.execute("CREATE INDEX threads_undelivered ON threads (undelivered) WHERE undelivered = 1")


@migrations()
def m007_credentials(db: Database) -> None:
    # Who may use the HTTP API and the web page. Mutable by nature (a token is
    # revoked, a session ends, a sign-in link is used once), and not part of
    # any thread. Only hashes of the secrets are kept: a copy of the database
    # signs nobody in.
    db.table("tokens").create(
        {
            "id": str,
            "person": str,
            "scope": str,
            "hash": str,
            "created_at": float,
            "expires_at": float,
            "revoked_at": float,
        },
        pk="id",
        not_null={"id", "person", "scope", "hash", "created_at"},
    )
    db.table("sessions").create(
        {"hash": str, "person": str, "auth": str, "csrf": str, "expires_at": float},
        pk="hash",
        not_null={"hash", "person", "auth", "csrf", "expires_at"},
    )
    db.table("sign_in_links").create(
        {"hash": str, "person": str, "expires_at": float, "used_at": float},
        pk="hash",
        not_null={"hash", "person", "expires_at"},
    )


@migrations()
def m008_timers_and_channels(db: Database) -> None:
    # Part of the projection: the channels a thread holds something
    # undelivered for (a notice may now go to an approver's own channel as
    # well as the thread's), as " slack email " so that one channel is found
    # with LIKE; and the thread's next timer (a reminder, escalation or
    # deadline), indexed, so that one query finds what is due. `overdue_at`
    # is when what it waits for became late (its first timer).
    db.table("threads").add_column("deliver_to", str, not_null_default="")
    db.table("threads").add_column("due_at", float)
    db.table("threads").add_column("overdue_at", float)
    db.execute(
        "UPDATE threads SET deliver_to = ' ' || json_extract(origin, '$.channel') || ' ' "
        "WHERE undelivered = 1"
    )
    db.execute("DROP INDEX threads_undelivered")
    db.execute("ALTER TABLE threads DROP COLUMN undelivered")
    db.execute("CREATE INDEX threads_deliver_to ON threads (deliver_to) WHERE deliver_to != ''")
    db.execute("CREATE INDEX threads_due ON threads (due_at) WHERE due_at IS NOT NULL")


@migrations()
def m009_notes(db: Database) -> None:
    # A channel's small note about a thread (the Slack message it is
    # streaming a reply into), so that a process started after a crash can
    # tidy what the one before left half-shown. Mutable, and not part of the
    # thread: losing it loses only that tidying.
    db.table("notes").create(
        {"thread_id": str, "channel": str, "value": str},
        pk=("thread_id", "channel"),
        not_null={"thread_id", "channel", "value"},
    )


@migrations()
def m010_webhook_outbox(db: Database) -> None:
    # Webhooks to send, one row per (event, URL), written in the transaction
    # of the append that caused the event: none is lost to a crash and none
    # is sent for an append that did not land. `next_at` is when it is due
    # (its next retry, or the end of the claim of the sender trying it now,
    # `claimed_by`); `state` is pending, delivered or failed (given up).
    db.execute(
        "CREATE TABLE webhook_outbox ("
        " id TEXT NOT NULL, url TEXT NOT NULL, type TEXT NOT NULL,"
        " thread_id TEXT NOT NULL, seq INTEGER NOT NULL, payload TEXT NOT NULL,"
        " created_at FLOAT NOT NULL, next_at FLOAT NOT NULL,"
        " attempts INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL DEFAULT 'pending',"
        " claimed_by TEXT, PRIMARY KEY (id, url))"
    )
    db.execute(
        "CREATE INDEX webhook_outbox_due ON webhook_outbox (next_at) WHERE state = 'pending'"
    )
    # Every attempt at sending one: what `threadbot webhooks log` shows.
    db.execute(
        "CREATE TABLE webhook_attempts ("
        " id TEXT NOT NULL, url TEXT NOT NULL, attempt INTEGER NOT NULL, at FLOAT NOT NULL,"
        " status INTEGER, error TEXT, duration FLOAT NOT NULL,"
        " PRIMARY KEY (id, url, attempt))"
    )
    db.execute("CREATE INDEX webhook_attempts_at ON webhook_attempts (at)")

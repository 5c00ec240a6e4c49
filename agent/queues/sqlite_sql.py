"""The embedded queue's statements: its schema, what files made by earlier versions get on
open, and the set-based claim and store (a fixed handful of statements whatever the batch; see
``SqliteQueue._take`` for why)."""

from __future__ import annotations

from agent.jobs.secrets import SECRET_FIELDS

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    job TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'ready',
    token INTEGER NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 0,
    agent TEXT,
    lease_until REAL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    result TEXT,
    secrets TEXT,
    digest TEXT,
    due REAL,
    priority INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_leased ON jobs (lease_until) WHERE state = 'processing';
"""
# After ADDED_COLUMNS: ready jobs in claim order (priority, then due time), so a claim walks
# the index and stops at its limit however many wait.
INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (priority DESC, due, seq) WHERE state = 'ready';
DROP INDEX IF EXISTS jobs_ready;
CREATE TRIGGER IF NOT EXISTS jobs_due_at_once AFTER INSERT ON jobs WHEN NEW.due IS NULL
BEGIN
    UPDATE jobs SET due = NEW.created WHERE seq = NEW.seq;
END;
"""
# (a row written without a due time, by an older agent or by hand, is due when it was made)
# files made before them get them on open (name -> declaration)
ADDED_COLUMNS = {
    "secrets": "TEXT",
    "digest": "TEXT",
    "due": "REAL",
    "priority": "INTEGER NOT NULL DEFAULT 0",
}
BACKFILL_DUE = "UPDATE jobs SET due = created WHERE due IS NULL"
# ... and their finished jobs lose the secrets earlier versions stored in clear text.
ERASE_OLD_SECRETS = f"""
UPDATE jobs SET job = json_remove(job, {", ".join(f"'$.{'.'.join(p)}'" for p in SECRET_FIELDS)})
WHERE state IN ('processed', 'error') AND json_valid(job)
    AND json_type(job, '$.inline_profile') IS NOT NULL
"""

# After inserting a batch of [id, digest]: the first id already stored with another digest.
DIFFERENT_CONTENT = """
SELECT jobs.id FROM json_each(?1) AS r JOIN jobs ON jobs.id = json_extract(r.value, '$[0]')
WHERE jobs.digest IS NOT NULL AND jobs.digest <> json_extract(r.value, '$[1]') LIMIT 1
"""

# Claim: lapsed leases first, then ready jobs that are due (highest priority first, then by
# due time), up to ?4. The rows this claim marked
# are the ones it stamped with its own time (?2) and lease (?3): the write lock it holds keeps
# every other transaction's stamp different.
MARK_CLAIMED = """
UPDATE jobs SET state = 'processing', token = token + 1, attempt = attempt + 1,
    agent = ?1, lease_until = ?3, updated = ?2
WHERE seq IN (
    SELECT seq FROM (
        SELECT seq, 0 AS pass, lease_until AS rank FROM (
            SELECT seq, lease_until FROM jobs
            WHERE state = 'processing' AND lease_until < ?2 ORDER BY lease_until LIMIT ?4)
        UNION ALL
        SELECT seq, 1, row_number() OVER (ORDER BY priority DESC, due, seq) FROM (
            SELECT seq, priority, due FROM jobs WHERE state = 'ready' AND due <= ?2
            ORDER BY priority DESC, due, seq LIMIT ?4)
    ) ORDER BY pass, rank LIMIT ?4
)
"""
# ... and what it marked, with the data_version (other connections' commits) it saw. A job
# longer than ?4 bytes (agent.max_job_bytes) comes back as its length alone, never parsed.
READ_CLAIMED = """
SELECT json_group_array(json_array(
        seq, id, CASE WHEN length(CAST(job AS BLOB)) > ?4 THEN 0 ELSE json_valid(job) END,
        CASE WHEN length(CAST(job AS BLOB)) > ?4 THEN NULL
            WHEN json_valid(job) THEN json(job) ELSE job END,
        token, attempt, length(CAST(job AS BLOB)), secrets, priority, due,
        CASE WHEN json_valid(result) THEN json_extract(result, '$.history') END)),
    (SELECT data_version FROM pragma_data_version)
FROM jobs
WHERE state = 'processing' AND lease_until = ?3 AND updated = ?2 AND agent = ?1
"""
# A batch of [id, token, state, result, due]; a claim fenced out (token moved on) matches no
# row. State ``ready`` is a retry: the job keeps its secrets and is due again at ``due``.
STORE_RESULTS = """
UPDATE jobs SET
    state = json_extract(r.value, '$[2]'),
    result = json_extract(r.value, '$[3]'),
    secrets = CASE json_extract(r.value, '$[2]') WHEN 'ready' THEN secrets END,
    due = coalesce(json_extract(r.value, '$[4]'), due),
    lease_until = NULL,
    updated = ?1
FROM json_each(?2) AS r
WHERE jobs.id = json_extract(r.value, '$[0]')
    AND jobs.token = json_extract(r.value, '$[1]')
    AND jobs.state = 'processing'
"""
# After STORE_RESULTS stored fewer rows than given: the ids it did not store (fenced out).
NOT_STORED = """
SELECT json_group_array(json_extract(r.value, '$[0]')) FROM json_each(?2) AS r
WHERE NOT EXISTS (
    SELECT 1 FROM jobs WHERE jobs.id = json_extract(r.value, '$[0]')
        AND jobs.token = json_extract(r.value, '$[1]') AND jobs.updated = ?1
        AND jobs.state = json_extract(r.value, '$[2]'))
"""

# jobs by state, and the oldest job created in each state (for ``summary``)
SUMMARY = "SELECT state, count(*), min(created) FROM jobs GROUP BY state"

# agent jobs: newest first, optionally of one state
LIST_JOBS = (
    "SELECT id, state, attempt, created, updated, lease_until, agent, result FROM jobs"
    " WHERE (? IS NULL OR state = ?) ORDER BY seq DESC LIMIT ?"
)

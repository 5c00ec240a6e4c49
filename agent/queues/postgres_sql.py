"""The shared queue's statements: the schema's migrations, in order (each runs once, under the
schema lock), and one statement per operation."""

from __future__ import annotations

from agent.jobs.secrets import SECRET_FIELDS

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE agent_jobs (
        id text PRIMARY KEY,
        seq bigserial NOT NULL UNIQUE,
        state text NOT NULL DEFAULT 'ready'
            CHECK (state IN ('ready', 'processing', 'processed', 'error')),
        job jsonb NOT NULL,
        result jsonb,
        attempt integer NOT NULL DEFAULT 0,
        token bigint NOT NULL DEFAULT 0,
        agent text,
        lease_until timestamptz,
        created timestamptz NOT NULL DEFAULT now(),
        updated timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX agent_jobs_ready ON agent_jobs (seq) WHERE state = 'ready';
    CREATE INDEX agent_jobs_leased ON agent_jobs (lease_until) WHERE state = 'processing';
    """,
    f"""
    ALTER TABLE agent_jobs ADD COLUMN secrets text, ADD COLUMN digest text;
    UPDATE agent_jobs SET job = job {" ".join(f"#- '{{{','.join(p)}}}'" for p in SECRET_FIELDS)}
    WHERE state IN ('processed', 'error') AND job ? 'inline_profile';
    """,
    # not_before and priority: ready jobs are claimed highest priority first, then by due time,
    # walking one index that stops at the claim's limit however many jobs wait.
    """
    ALTER TABLE agent_jobs
        ADD COLUMN due timestamptz, ADD COLUMN priority integer NOT NULL DEFAULT 0;
    UPDATE agent_jobs SET due = created WHERE due IS NULL;
    ALTER TABLE agent_jobs ALTER COLUMN due SET DEFAULT now(), ALTER COLUMN due SET NOT NULL;
    CREATE INDEX agent_jobs_due ON agent_jobs (priority DESC, due, seq) WHERE state = 'ready';
    DROP INDEX agent_jobs_ready;
    """,
)

ENQUEUE = """
WITH added AS (
    INSERT INTO agent_jobs (id, job, secrets, digest, due, priority)
    SELECT id, job::jsonb, secrets, digest, coalesce(to_timestamp(due), now()), priority
    FROM unnest($1::text[], $2::text[], $4::text[], $5::text[], $6::float8[], $7::int[])
        WITH ORDINALITY AS j(id, job, secrets, digest, due, priority, n)
    ORDER BY n
    ON CONFLICT (id) DO NOTHING
    RETURNING 1
)
SELECT pg_notify($3, count(*)::text) FROM added HAVING count(*) > 0
"""
# Run after ENQUEUE in its transaction (so it sees rows a concurrent enqueue just committed).
DIFFERENT_CONTENT = """
SELECT a.id FROM unnest($1::text[], $2::text[]) AS g(id, digest) JOIN agent_jobs a USING (id)
WHERE a.digest IS NOT NULL AND a.digest <> g.digest LIMIT 1
"""

# Two index-ordered scans (lapsed leases by deadline, then due ready jobs by priority and due
# time) that stop at the limit: the cost does not grow with the backlog, unlike one ORDER BY
# over both kinds.
CLAIM = """
WITH lapsed AS MATERIALIZED (
    SELECT id FROM agent_jobs
    WHERE state = 'processing' AND lease_until < now()
    ORDER BY lease_until
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), ready AS MATERIALIZED (
    SELECT id FROM agent_jobs
    WHERE state = 'ready' AND due <= now()
    ORDER BY priority DESC, due, seq
    LIMIT greatest(0, $3 - (SELECT count(*) FROM lapsed))
    FOR UPDATE SKIP LOCKED
)
UPDATE agent_jobs j
SET state = 'processing', token = j.token + 1, attempt = j.attempt + 1, agent = $1,
    lease_until = now() + make_interval(secs => $2), updated = now()
WHERE j.id IN (SELECT id FROM lapsed UNION ALL SELECT id FROM ready)
RETURNING j.id, j.job::text, j.token, j.attempt, j.seq, j.secrets, j.priority, j.due,
    (j.result -> 'history')::text
"""

RENEW = """
UPDATE agent_jobs j SET lease_until = now() + make_interval(secs => $3), updated = now()
FROM unnest($1::text[], $2::bigint[]) AS c(id, token)
WHERE j.id = c.id AND j.token = c.token AND j.state = 'processing'
RETURNING j.id, j.token
"""

# State ``ready`` is a retry: the job keeps its secrets and is due again at ``due``.
COMPLETE = """
UPDATE agent_jobs j
SET state = c.state, result = c.result::jsonb, lease_until = NULL, updated = now(),
    secrets = CASE WHEN c.state = 'ready' THEN j.secrets END,
    due = coalesce(to_timestamp(c.due), j.due)
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::float8[])
    AS c(id, token, state, result, due)
WHERE j.id = c.id AND j.token = c.token AND j.state = 'processing'
RETURNING j.id, j.token
"""

RELEASE = """
UPDATE agent_jobs j
SET state = 'ready', lease_until = NULL, agent = NULL, attempt = j.attempt - 1, updated = now()
FROM unnest($1::text[], $2::bigint[]) AS c(id, token)
WHERE j.id = c.id AND j.token = c.token AND j.state = 'processing'
"""

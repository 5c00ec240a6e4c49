"""Session bookkeeping of the transport: bounded idle sessions, nothing in use is closed."""

from __future__ import annotations

from agent.http.transport import Transport


async def test_least_recently_used_idle_sessions_are_closed_over_the_bound() -> None:
    transport = Transport()
    transport.max_sessions = 2
    try:
        async with transport.session("a") as first:
            pass
        async with transport.session("b"):
            pass
        async with transport.session("a") as again:  # a is used again: b is now the oldest
            assert again is first
        async with transport.session("c"):
            pass
        assert transport.identities == ["a", "c"]
        assert not first.closed
        async with transport.session("b") as b:  # back, with a new session
            assert transport.identities == ["c", "b"]
        await transport.close()
        assert first.closed and b.closed
    finally:
        await transport.close()


async def test_a_session_in_use_is_never_evicted() -> None:
    transport = Transport()
    transport.max_sessions = 1
    try:
        async with transport.session("busy") as busy:
            async with transport.session("other"):
                pass
            assert "busy" in transport.identities and not busy.closed
            async with transport.session("third"):
                pass
            assert "busy" in transport.identities and not busy.closed
    finally:
        await transport.close()

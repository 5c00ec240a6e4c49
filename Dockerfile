# syntax=docker/dockerfile:1
# The forwarding agent in a container: a wheel built in one stage, installed in a slim runtime.
#
#   docker build -t mtls-agent .
#   docker run -d --name agent --read-only --tmpfs /tmp \
#     -v agent-state:/var/lib/agent \
#     -v "$PWD/config.xml:/etc/agent/config.xml:ro" \
#     -v "$PWD/keys:/etc/agent/keys:ro" \
#     -p 127.0.0.1:9464:9464 mtls-agent
#
# Configuration: config.xml at /etc/agent/config.xml; relative paths in it resolve against
# /etc/agent. Anything the agent writes lives in the /var/lib/agent volume: the journal (set
# below) and an embedded queue (write url as sqlite:////var/lib/agent/queue.db).
# MID_CONFIG_<parameter> overrides the parameter of that name (a double underscore may stand
# for each dot; the dotted spelling wins when both are set), e.g.
#   -e MID_CONFIG_threads.max=50 -e MID_CONFIG_mid.log.level=debug
#   -e MID_CONFIG_agent.outbound.allow='*.partner.example,203.0.113.0/24'
#   -e MID_CONFIG_mid.httpclient.protocol.partner.password=...   (or a secure="true" value)
#
# secure="true" values: on start the agent encrypts plain ones in place and keeps the key in
# config.xml.key beside config.xml. A read-only mount cannot be rewritten, so the values stay in
# clear text on disk (a warning says so) and are only used in memory. To keep them encrypted,
# encrypt once with a writable copy of the directory, then mount the directory read-only:
#   docker run --rm -v "$PWD/etc-agent:/etc/agent" mtls-agent -c /etc/agent/config.xml validate
#   docker run ... -v "$PWD/etc-agent:/etc/agent:ro" ...
# (config.xml.key must be readable by uid 10001).

FROM python:3.11-slim AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && pip wheel --no-cache-dir --wheel-dir /wheels /wheels/*.whl

FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AGENT_CONFIG=/etc/agent/config.xml \
    MID_CONFIG_agent__journal__path=/var/lib/agent/agent-journal.db \
    MID_CONFIG_agent__health__listen=0.0.0.0:9464
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels mtls-forwarding-agent \
 && groupadd --system --gid 10001 agent \
 && useradd --system --uid 10001 --gid agent --home-dir /var/lib/agent \
      --shell /usr/sbin/nologin agent \
 && install -d -o agent -g agent -m 0750 /var/lib/agent \
 && install -d -m 0755 /etc/agent
USER 10001:10001
WORKDIR /var/lib/agent
VOLUME ["/var/lib/agent"]
EXPOSE 9464
# /healthz answers while the event loop runs (no curl in slim: Python asks). The port follows
# MID_CONFIG_agent.health.listen (or its __ spelling).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; e = os.environ; port = e.get('MID_CONFIG_agent.health.listen', e.get('MID_CONFIG_agent__health__listen', ':9464')).rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
# SIGTERM drains jobs in flight (agent.drain.seconds, 30 by default): stop with a longer grace,
# e.g. docker stop -t 45.
STOPSIGNAL SIGTERM
ENTRYPOINT ["agent"]
CMD ["-c", "/etc/agent/config.xml", "run"]

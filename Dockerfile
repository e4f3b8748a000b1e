# The gateway on a slim Python base. The database is external: set
# GATEWAY_DATABASE_URL (postgresql://user:pass@host:5432/db) when running.
# Pinned to a patch release and a Debian release, so a rebuild gets the same
# Python; add the registry's @sha256 digest to pin the bytes too.
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    GATEWAY_HTTP_PORT=8080 GATEWAY_SIP_PORT=5060
WORKDIR /app
COPY pyproject.toml README.md requirements.lock ./
COPY gateway ./gateway
COPY config ./config
# Exactly the versions requirements.lock pins, then the gateway itself. The
# process runs as uid 10001; the code stays root's (read-only to it) and only
# var/ (the outbox) is its own.
RUN pip install -r requirements.lock \
 && pip install --no-deps . \
 && useradd --system --uid 10001 --home-dir /app --no-create-home gateway \
 && mkdir -p /app/var/outbox \
 && chown -R gateway:gateway /app/var \
 && chmod 0700 /app/var/outbox
USER gateway

# The outbox holds what was acknowledged while Postgres was away: it must
# outlive the container (one volume per gateway instance, never shared).
VOLUME ["/app/var/outbox"]
EXPOSE 5060/udp 5060/tcp 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('GATEWAY_HTTP_PORT', '8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["gateway"]
CMD ["serve"]

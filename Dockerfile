# The relay node image: `relayctl serve`, as a non-root user, on a read-only root file system
# (deploy/kubernetes/ mounts the configuration, the secrets and a writable /var/lib/relay).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/relay
COPY pyproject.toml README.md ./
COPY relay ./relay
RUN pip install --no-compile . \
    && groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid relay --home-dir /var/lib/relay --no-create-home relay \
    && install -d -o relay -g relay -m 0700 /var/lib/relay

USER 10001:10001
EXPOSE 2525 2587 2465 8025
ENTRYPOINT ["relayctl"]
CMD ["serve", "-c", "/etc/relay/relay.toml"]

"""`python -m keybroker serve --config FILE.json`: run one party's key broker.

`python -m keybroker tls --ca-dir DIR --out DIR --name NAME`: create (once) the local CA of the embedded
stack and a fresh loopback server certificate; prints {"ca_cert", "cert", "key"} as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import uvicorn

from keybroker.app import create_app
from keybroker.config import BrokerConfig
from keybroker.tls import ensure_local_tls
from wire.jsonlog import JsonFormatter


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the sub-command."""
    parser = argparse.ArgumentParser(prog="python -m keybroker", description="cscore key broker")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="run the broker over HTTPS (or HTTP on loopback)")
    serve_p.add_argument("--config", required=True, help="broker config JSON (see docs/ARCHITECTURE.md)")
    tls_p = sub.add_parser("tls", help="create the local CA (once) and a loopback server certificate")
    tls_p.add_argument("--ca-dir", required=True, type=Path, help="folder of ca.pem / ca.key (kept)")
    tls_p.add_argument("--out", required=True, type=Path, help="folder for <name>-tls.pem / <name>-tls.key")
    tls_p.add_argument("--name", required=True, help="broker name (owner, provider)")
    args = parser.parse_args(argv)
    if args.command == "tls":
        files = ensure_local_tls(args.ca_dir, args.out, args.name)
        print(json.dumps({"ca_cert": str(files.ca_cert), "cert": str(files.cert), "key": str(files.key)}))
        return 0
    try:
        config = BrokerConfig.from_file(args.config)
    except (ValueError, OSError) as exc:
        print(f"keybroker: config {args.config}: {exc}", file=sys.stderr)
        return 2
    return serve(config)


def configure_logging(config: BrokerConfig) -> None:
    """The root logger on stderr, in the configured format (`log_format`: text or JSON lines)."""
    handler = logging.StreamHandler(sys.stderr)
    if config.log_format == "json":
        handler.setFormatter(JsonFormatter(f"{config.name}-broker"))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {config.name}-broker %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler], force=True)


def serve(config: BrokerConfig) -> int:
    """Serve until interrupted; exits 2 when the transport settings are refused."""
    configure_logging(config)
    log = logging.getLogger("keybroker")
    try:
        config.check_transport()
        config.store_target  # noqa: B018 (a db_url_path that cannot be read is refused here, before serving)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    app = create_app(config)
    log.info("broker '%s' listening on %s://%s:%d", config.name, config.scheme, config.host, config.port)
    # One process: sessions and the PoP replay cache live in memory.
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level, workers=1,
                # JSON: uvicorn's own loggers (errors, access lines) propagate to the root's JSON handler.
                log_config=None if config.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
                server_header=False, limit_concurrency=config.max_connections,
                # An idle TLS keep-alive connection otherwise holds shutdown until its client goes away.
                timeout_graceful_shutdown=config.shutdown_timeout_s,
                ssl_certfile=str(config.tls_cert_path) if config.tls_cert_path else None,
                ssl_keyfile=str(config.tls_key_path) if config.tls_key_path else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

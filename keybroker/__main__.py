"""`python -m keybroker serve --config FILE.json`: run one party's key broker."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from keybroker.app import create_app
from keybroker.config import BrokerConfig


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m keybroker", description="cscore key broker")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the broker over HTTP")
    serve.add_argument("--config", required=True, help="broker config JSON (see docs/ARCHITECTURE.md)")
    args = parser.parse_args(argv)
    config = BrokerConfig.from_file(args.config)
    logging.basicConfig(stream=sys.stderr, level=config.log_level.upper(),
                        format=f"%(asctime)s {config.name}-broker %(levelname)s %(name)s: %(message)s")
    app = create_app(config)
    logging.getLogger("keybroker").info("broker '%s' listening on http://%s:%d", config.name, config.host,
                                        config.port)
    # One process: sessions and the PoP replay cache live in memory.
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level, workers=1,
                server_header=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Key broker: one service per key owner, releasing keys only to attested enclaves (KBS shape).

Start it with `python -m keybroker serve --config FILE.json`; build it in-process with `create_app`.
"""

from keybroker.app import create_app
from keybroker.config import BrokerConfig

__all__ = ["BrokerConfig", "create_app"]

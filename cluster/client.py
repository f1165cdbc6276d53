"""Public import path of the Python Client and Worker (`from cluster.client import Client, Worker`).

The code lives in `cluster.gearman`; this module keeps the documented path working.
"""

from cluster.gearman.client import *  # noqa: F403
from cluster.gearman.client import __all__  # noqa: F401

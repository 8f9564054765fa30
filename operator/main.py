"""Entry point for ``kopf run -m tessera.operator.main``: importing the modules registers their handlers.

Settings come from ``TESSERA_*`` environment variables (``tessera.operator.settings``);
``tessera operator`` runs the same handlers with command-line flags.
"""

from tessera.operator import handlers, logs, power, webhook  # noqa: F401  (handlers register by import)
from tessera.operator.settings import OperatorSettings

logs.quiet_routine_successes()  # under `kopf run`, whose command line has configured logging by now

if OperatorSettings.from_env().webhook_port:
    webhook.register()

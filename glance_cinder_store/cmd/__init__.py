"""Operator tools: glance-cinder-store-check and glance-cinder-store-cleanup.

Both read glance-api's configuration, log through oslo.log (``--debug``,
``--log-file``), print a report as text or, with ``--format json``, as one
JSON document on stdout, and exit with:

  0  nothing wrong (check: every check passed; cleanup: nothing is left
     to undo);
  1  problems found (listed in the report);
  2  usage or configuration error (bad option, unreadable configuration,
     no ``cinder_plus`` store configured, cleanup run as root).
"""

import warnings

# oslo.privsep imports eventlet, which warns on import that it is
# deprecated; the tools do not use eventlet (the store's code runs under
# native threads), so an operator has nothing to act on.  Filtered here,
# before any module of the tools imports oslo.privsep.
warnings.filterwarnings('ignore', message=r'\s*Eventlet is deprecated')

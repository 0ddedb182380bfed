"""The one place, besides os-brick's own, where code runs as root.

glance-api runs unprivileged and block devices belong to root.  Rather than
hand the device over (``chown``, as the built-in driver does, which takes it
from whoever else uses it, e.g. qemu for a nova instance on this host) we add
an ACL entry for the glance user, and remove it before the device goes.

That runs in an oslo.privsep daemon of our own, started once per process
through ``sudo glance-rootwrap <rootwrap_config> privsep-helper ...`` (which
oslo.rootwrap always allows), so each grant costs a socket round trip
instead of a sudo + rootwrap start-up (~0.4 s).  The daemon keeps only
CAP_FOWNER, and its entry points (acl.py) accept only block devices in /dev
and never uid 0.
"""

import logging
import os
import shlex
import sys
import threading

from oslo_privsep import capabilities as caps
from oslo_privsep import priv_context

LOG = logging.getLogger(__name__)

default = priv_context.PrivContext(
    __name__,
    cfg_section='privsep_glance_cinder_store',
    pypath=__name__ + '.default',
    capabilities=[caps.CAP_FOWNER],
)

_ready = set()


def root_helper(rootwrap_config):
    return 'sudo glance-rootwrap %s' % rootwrap_config


def init(rootwrap_config):
    """Tell oslo.privsep (ours and os-brick's) how to become root, once."""
    if rootwrap_config in _ready:
        return
    priv_context.init(root_helper=shlex.split(root_helper(rootwrap_config)))
    _ready.add(rootwrap_config)


def _contexts(ours):
    from os_brick import privileged as brick_privileged
    return ([default] if ours else []) + [brick_privileged.default]


def start_in_background(rootwrap_config, ours=True):
    """Start our privsep daemon and os-brick's now, off the request path.

    Each takes ~2 s (sudo, rootwrap, a Python start-up); started lazily,
    the first download or upload after a worker start would wait for them.
    A request that comes meanwhile waits for the same start (oslo.privsep
    starts a context once, under its lock).  ``ours`` is False when this
    process runs as root and never asks for device access.
    """
    init(rootwrap_config)
    contexts = _contexts(ours)

    def start():
        for ctx in contexts:
            if ctx.channel is not None:
                continue
            try:
                ctx.start()
            except Exception as e:
                # Not fatal: the first request that needs it retries.
                LOG.warning('could not start the privsep daemon %s ahead '
                            'of time: %s', ctx.pypath, e)
    thread = threading.Thread(target=start, daemon=True,
                              name='gcs-privsep-start')
    thread.start()
    return thread


def _forget_parents_daemons():
    """In a forked child, start new daemons when needed.

    The parent's channels do not work there: their reader threads stayed
    in the parent.
    """
    brick = sys.modules.get('os_brick.privileged')
    for ctx in [default] + ([brick.default] if brick else []):
        ctx.channel = None


os.register_at_fork(after_in_child=_forget_parents_daemons)

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

import shlex

from oslo_privsep import capabilities as caps
from oslo_privsep import priv_context

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

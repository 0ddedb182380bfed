"""Every configuration option of the store, in one place.

The ``cinder_*`` options and ``rootwrap_config`` are glance_store's own option
objects, reused as they are: glance_store registers every installed driver's
options into the same groups, and two different definitions of one name make
glance-api fail at start-up with DuplicateOptError.  Reusing the objects also
keeps their names, defaults and meaning, so an operator switches between the
built-in ``cinder`` driver and ours by changing the store type only.

Our own options all start with ``cinder_plus_`` so they can never collide
with a future glance_store option.
"""

from glance_store._drivers.cinder import store as builtin_cinder
from oslo_config import cfg

SHARED_OPTS = list(builtin_cinder._CINDER_OPTS)

OUR_OPTS = [
    cfg.StrOpt('cinder_plus_state_dir',
               default='/var/lib/glance/cinder-plus',
               help="""
Folder for this host's attachment records and locks.

Each volume attached on this host has a small record here naming the Cinder
attachment, the local device and the processes using it, so that readers
share one attachment and a crashed process's attachment is recovered by the
next user or by ``glance-cinder-store-cleanup``. Must be writable by the
glance-api user and local to the host (not shared between hosts).
"""),
    cfg.FloatOpt('cinder_plus_attach_grace_period',
                 default=0.0, min=0.0,
                 help="""
Seconds to keep a read-only attachment after its last reader finished.

Back-to-back downloads of a popular image then skip the attach (about 0.2 s
each). A lingering attachment never blocks a delete, an extend or a writer:
the store detaches it first. 0 detaches as soon as the last reader is done.
"""),
    cfg.IntOpt('cinder_plus_io_chunk_size',
               default=4 * 1024 * 1024, min=64 * 1024,
               help="""
Size in bytes of one read or write on the device.

Uploads are re-blocked to this size so writes are aligned. Memory used by a
transfer is about this size times ``cinder_plus_io_queue_depth`` times three.
"""),
    cfg.IntOpt('cinder_plus_io_queue_depth',
               default=4, min=1,
               help="""
How many chunks may be in flight between the reading, hashing and writing
stages of one transfer.
"""),
    cfg.BoolOpt('cinder_plus_skip_zeroes',
                default=True,
                help="""
Zero aligned all-zero blocks with the device's zeroing call (BLKZEROOUT, or
punching a hole in a file) instead of writing them as bytes.

Keeps thin-provisioned volumes thin and makes sparse images fast to upload.
The result reads back identical.
"""),
    cfg.IntOpt('cinder_plus_max_extend_step_gb',
               default=64, min=1,
               help="""
Largest single growth, in GiB, of a volume written from data of unknown size.

Such volumes double in size each time they fill up (fewer extends, at most
half the volume unused at the end, which costs nothing on thin backends),
but never by more than this.
"""),
]

OUR_OPTS += [
    cfg.FloatOpt('cinder_plus_self_heal_interval',
                 default=20.0, min=0.0,
                 help="""
Seconds between two passes of each glance-api process's self-healing.

Every process reconciles this host's leftovers when its store starts and
then about this often (with jitter; one pass at a time per host): it
detaches attachments whose holders died and deletes the volumes of this
host's uploads whose uploader died, so a killed worker leaves nothing
behind for long. A pass never blocks a request. 0 turns the periodic pass
off (the start-up pass and ``glance-cinder-store-cleanup`` remain).
"""),
    cfg.FloatOpt('cinder_plus_upload_heartbeat_interval',
                 default=60.0, min=0.0,
                 help="""
Seconds between two refreshes of a running upload's mark (volume metadata
``glance_cinder_store_upload``), from a background thread. Other hosts judge
an upload they cannot see by this heartbeat. 0 never refreshes it.
"""),
    cfg.FloatOpt('cinder_plus_upload_stale_after',
                 default=0.0, min=0.0,
                 help="""
Seconds without a heartbeat after which an upload of another host (or pid
namespace) counts as abandoned, for ``glance-cinder-store-cleanup``.

Uploads of this host are judged by their process only, never by age. 0 (the
default) never condemns another host's upload: that host cleans up its own.
Set it well above ``cinder_plus_upload_heartbeat_interval`` (e.g. 10 times).
"""),
]

OPTIONS = SHARED_OPTS + OUR_OPTS


def list_opts():
    """For oslo-config-generator: every option in ``[glance_store]``."""
    return [('glance_store', OPTIONS)]

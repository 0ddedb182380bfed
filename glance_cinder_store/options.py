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
                 default=300.0, min=0.0,
                 help="""
Seconds to keep a read-only attachment after its last reader finished (the
warm attachment cache).

A download of an image read within this time skips the attach (Cinder round
trips, about 0.2 s) and reads from the host's page cache: its first byte
comes at once.  An idle attachment never blocks anyone: a delete or a writer
on this host detaches it at once; a delete on another host, or a reader on
another host of a volume that cannot be attached twice, asks for it through
the volume's metadata and gets it within
``cinder_plus_warm_check_interval``.  0 turns the cache off: the last
reader detaches.
"""),
    cfg.IntOpt('cinder_plus_warm_attachments',
               default=8, min=0,
               help="""
Most idle read-only attachments each glance-api process keeps (the warm
attachment cache); beyond that the least recently used one is detached.

Each one holds a device on the host (a loop device, an iSCSI session...)
and a Cinder attachment.  0 turns the cache off.
"""),
    cfg.FloatOpt('cinder_plus_warm_check_interval',
                 default=5.0, min=0.5,
                 help="""
Seconds between two checks, while the warm attachment cache holds
something, whether another host asked for one of its volumes.

With the store's own credentials the glance-api processes of a host share
one Cinder query (the volumes carrying the release mark, through Cinder's
metadata filter) per half interval: an answer up to half an interval old
serves them all, so a delete on another host waits at most about one and
a half intervals for us. Every 12th check of each process also costs one
volume GET per idle attachment it keeps, which notices a volume deleted
behind our back.
"""),
    cfg.BoolOpt('cinder_plus_prestart_privsep',
                default=True,
                help="""
Start the privsep daemons (this driver's and os-brick's) in the background
when the store is configured, so the first upload or download after a
glance-api worker starts does not wait about 2 s for them.
"""),
    cfg.IntOpt('cinder_plus_io_chunk_size',
               default=4 * 1024 * 1024, min=64 * 1024,
               help="""
Size in bytes of one read or write on the device.

Uploads are re-blocked to this size so writes are aligned. Downloads hand
Glance at most 1 MiB at a time (slices of these reads, or reads of what the
page cache holds), which uwsgi copies on while it is in the CPU's cache.
Memory used by a transfer is about this size times
``cinder_plus_io_queue_depth`` times three.
"""),
    cfg.IntOpt('cinder_plus_io_queue_depth',
               default=4, min=1,
               help="""
How many chunks may be in flight between the reading, hashing and writing
stages of one transfer.
"""),
    cfg.BoolOpt('cinder_plus_direct_reads',
                default=True,
                help="""
Read the first download of a freshly attached volume with O_DIRECT.

A thread reads ahead into a few reused aligned buffers instead of filling
fresh page-cache pages. On the test cloud (a VM, loop devices) a first 1 GiB
download through glance-api ran at 900-1000 MB/s instead of about 400 MB/s,
at 0.4 s of glance-api CPU per GiB instead of 2.4 s. Later downloads of a
warm attachment whose page cache is kept (``cinder_plus_keep_page_cache``)
are read buffered, from memory, once the image is there. Devices that refuse
O_DIRECT are read buffered either way.
"""),
    cfg.BoolOpt('cinder_plus_keep_page_cache',
                default=True,
                help="""
Keep the page cache of warm read-only attachments.

Linux drops a block device's page cache when its last descriptor closes, so
each glance-api process keeps one descriptor open on the device of every
attachment it holds or keeps warm (``cinder_plus_warm_attachments``). After
the first (direct) download of an attachment, a low-priority thread reads the
image once more through that descriptor, filling the cache in the background;
later downloads (from any glance-api process of the host, concurrent or not)
then read from memory like Glance's file store. The memory is ordinary page
cache, reclaimed under pressure: at most the images of the warm attachments.
A detach on this host first asks every process that keeps the device to close
it, and waits at most 5 seconds. Needs native threads (off
under eventlet) and the warm attachment cache.
"""),
    cfg.IntOpt('cinder_plus_warm_after_upload',
               default=4096, min=0,
               help="""
Largest image, in MiB, that is attached read-only and brought into the page
cache in the background right after its upload, as if it had just been read;
0 turns this off.

The first download of a new image (a boot right after the upload, most
often) then starts at once and reads from memory, as Glance's file store
reads the file its upload left in the page cache, instead of attaching the
volume and reading the device. Costs one more Cinder attachment per upload,
kept like any warm attachment (``cinder_plus_attach_grace_period``,
``cinder_plus_warm_attachments``) and up to the image's size of reclaimable
page cache. Only for volumes of a multiattach type, so a reader on another
host never has to wait for this host to let go; and only with the store's
own Cinder credentials and ``cinder_plus_keep_page_cache``.
"""),
    cfg.BoolOpt('cinder_plus_skip_zeroes',
                default=True,
                help="""
Zero aligned all-zero blocks with the device's zeroing call (BLKZEROOUT, or
punching a hole in a file) instead of writing them as bytes.

Keeps thin-provisioned volumes thin and makes sparse images fast to upload.
The result reads back identical.
"""),
    cfg.FloatOpt('cinder_plus_extend_factor',
                 default=1.33, min=1.01, max=4.0,
                 help="""
How much a volume written from data of unknown size grows each time it
fills up: its size times this factor, at least 1 GiB and at most
``cinder_plus_max_extend_step_gb`` more.

The unused part at the end is at most ``1 - 1/factor`` of the volume once
it is past a few GiB (25% for 1.33; 50% for 2, which doubles), which costs
quota, and space on thick backends.  A smaller factor needs more extends
(about log(N)/log(factor) for N GiB; 1.33: 8 for 10 GiB, 14 for 50 GiB),
each a Cinder call and a wait of about a second (measured by
``tools/bench``, see doc/source/performance.rst).
"""),
    cfg.IntOpt('cinder_plus_max_extend_step_gb',
               default=64, min=1,
               help="""
Largest single growth, in GiB, of a volume written from data of unknown
size (see ``cinder_plus_extend_factor``).
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
    cfg.IntOpt('cinder_plus_volume_pool_size',
               default=0, min=0,
               help="""
Empty 1 GiB volumes of the store's type each glance-api process keeps ready
for small uploads (the volume pool). 0 (the default) turns the pool off.

Pool volumes are attached read-write to the host ahead of time. An upload
of at most 1 GiB (or of unknown size) claims one without a Cinder call
instead of creating, waiting for and attaching a volume (about 0.4 s of a
1 MiB upload), renames it with its final metadata, and the process creates
and attaches a replacement in the background once the host has transferred
no image for a second (at most 10 s later): a burst of uploads draws the
pool down, the quiet after it fills it again. Needs the ``cinder_store_*``
service credentials. Pool volumes count against the service project's
volume and gigabyte quotas and hold one attachment each on the host (this
many per glance-api process and store). They are named
``glance-cinder-store-pool-<store>-...`` and carry the
``glance_cinder_store_pool`` and upload marks: the process deletes them at
exit, and the self-healing pass and ``glance-cinder-store-cleanup`` detach
and delete those of a process that is gone.
"""),
]

OUR_OPTS += [
    cfg.FloatOpt('cinder_plus_http_timeout',
                 default=180.0, min=0.0,
                 help="""
Seconds to wait for an answer to one HTTP request to Cinder or Keystone.

Without a bound, a cinder-api that accepted a connection and never answers
(hung, or behind a dead load balancer) holds the upload or download, and the
volume lock with it, forever. Cinder answers its slowest calls (an attachment
with its connection, after an RPC round trip to cinder-volume) within its
``rpc_response_timeout`` (60 s by default), so keep this above that. A
request that timed out counts as possibly done: reads are retried
(``cinder_http_retries``), creates only after a lookup shows they did not
take effect. 0 waits forever.
"""),
]

OPTIONS = SHARED_OPTS + OUR_OPTS


def list_opts():
    """For oslo-config-generator: every option in ``[glance_store]``."""
    return [('glance_store', OPTIONS)]

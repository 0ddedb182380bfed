"""The all-in-one cloud's store ids and Cinder volume types, defined once.

cloud.py creates the volume types from these; the demo, the benchmark and
the functional tests look stores and types up here.  tools/aio's
write_glance_conf names the same stores in glance-api.conf.
"""

#: Stores of our driver (store id -> volume type).
GOLD = 'gold'
SILVER = 'silver'
#: A store of glance_store's built-in ``cinder`` driver.
BUILTIN = 'builtin'
#: Glance's file store.
FILES = 'files'
#: A store of our driver whose volume type Cinder does not have: served
#: only by the glance-api that tests/functional/test_glance_modes starts.
BROKEN = 'broken'

DEFAULT_STORE = GOLD

#: store id -> the volume type its images are written with
TYPES = {
    GOLD: 'glance-gold',
    SILVER: 'glance-silver',
    BUILTIN: 'glance-builtin',
}
MISSING_TYPE = 'glance-no-such-type'
#: Stores on Cinder's second backend, the one-node Ceph of
#: tools/aio_lib/ceph.sh (AIO_CEPH=1): ours and the built-in driver's.
CEPH = 'ceph'
BUILTIN_CEPH = 'builtin-ceph'
CEPH_BACKEND = 'ceph'
CEPH_TYPES = {
    CEPH: 'glance-ceph',
    BUILTIN_CEPH: 'glance-builtin-ceph',
}
#: A type that is none of the stores' own, but tells Cinder (by
#: ``image_service:store_id``) to upload volumes of it to store silver.
TO_SILVER_TYPE = 'glance-to-silver'
#: A store of our driver whose volume type is NOT multiattach: one host
#: at a time (tests/functional/test_multihost.py).
SINGLE = 'single'
SINGLE_TYPE = 'glance-single'

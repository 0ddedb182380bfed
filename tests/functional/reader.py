"""A reader process for the concurrency tests: reads one image slowly.

python -m tests.functional.reader STATE_DIR VOLUME_ID DELAY [STORE]
prints 'attached' after the first chunk, 'done <sha256>' at the end.
"""

import hashlib
import sys
import time

from glance_store import location as gs_location

from tests.functional import test_driver


def main():
    state_dir, volume_id, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    backend = sys.argv[4] if len(sys.argv) > 4 else 'gold'
    store = test_driver.make_store(state_dir, backend=backend,
                                   cinder_plus_io_chunk_size=1024 * 1024)
    loc = gs_location.get_location_from_uri_and_backend(
        'cinder://%s/%s' % (backend, volume_id), backend, conf=store.conf)
    ctx = test_driver.Context('reader')
    digest = hashlib.sha256()
    it, _ = store.get(loc, context=ctx)
    for n, chunk in enumerate(it):
        digest.update(chunk)
        if n == 0:
            print('attached', flush=True)
        time.sleep(delay)
    print('done', digest.hexdigest(), flush=True)


if __name__ == '__main__':
    main()

"""Image locations: ``cinder://<volume>`` and ``cinder://<store>/<volume>``.

Both forms are what Cinder and the built-in driver understand, so images move
between the two drivers and Cinder's clone paths keep working.  Anything else
is refused with BadStoreUri rather than guessed at.
"""

import re

from glance_store import exceptions
import glance_store.location
from oslo_utils import uuidutils

SCHEME = 'cinder'
_STORE_ID = re.compile(r'^[A-Za-z0-9_.-]+$')


def _known_store_ids(conf):
    """The store ids glance-api was configured with, or None in legacy mode."""
    try:
        backends = conf.enabled_backends
    except Exception:  # option not registered: single-store (legacy) mode
        return None
    return set(backends or ()) or None


class StoreLocation(glance_store.location.StoreLocation):
    """A volume holding one image, optionally tagged with its store id."""

    def process_specs(self):
        self.scheme = SCHEME
        self.volume_id = self.specs.get('volume_id')

    def get_uri(self):
        if self.backend_group:
            return '%s://%s/%s' % (SCHEME, self.backend_group, self.volume_id)
        return '%s://%s' % (SCHEME, self.volume_id)

    def parse_uri(self, uri):
        self.validate_schemas(uri, valid_schemas=('%s://' % SCHEME,))
        parts = uri[len(SCHEME) + 3:].split('/')
        if len(parts) == 1:
            store_id, volume_id = None, parts[0]
        elif len(parts) == 2:
            store_id, volume_id = parts
        else:
            raise exceptions.BadStoreUri(
                message='Malformed cinder location %r: expected '
                        'cinder://<volume-id> or cinder://<store>/<volume-id>'
                        % uri)
        if not uuidutils.is_uuid_like(volume_id):
            raise exceptions.BadStoreUri(
                message='Cinder location %r does not name a volume id' % uri)
        if store_id is not None:
            known = _known_store_ids(self.conf)
            if not _STORE_ID.match(store_id) or (
                    known is not None and store_id not in known):
                raise exceptions.BadStoreUri(
                    message='Cinder location %r names store %r, which is '
                            'not configured here' % (uri, store_id))
        self.scheme = SCHEME
        self.volume_id = volume_id
        self.store_id = store_id

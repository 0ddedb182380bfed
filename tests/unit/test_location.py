from glance_store import exceptions
import pytest

from glance_cinder_store import location
from tests.unit.conftest import make_conf

VOL = '0b0e2f1c-6a53-4a52-9f43-3a2b1d6a1c11'


@pytest.fixture
def conf(tmp_path):
    return make_conf(tmp_path)


def parse(conf, uri, backend='gold'):
    loc = location.StoreLocation({}, conf, backend_group=backend)
    loc.parse_uri(uri)
    return loc


@pytest.mark.parametrize('uri,store_id', [
    ('cinder://%s' % VOL, None),
    ('cinder://gold/%s' % VOL, 'gold'),
    ('cinder://builtin/%s' % VOL, 'builtin'),    # written by the built-in
])
def test_good_uris(conf, uri, store_id):
    loc = parse(conf, uri)
    assert loc.volume_id == VOL and loc.store_id == store_id


@pytest.mark.parametrize('uri', [
    'cinder://', 'cinder://not-a-uuid', 'cinder://gold/', 'cinder:///' + VOL,
    'cinder://nosuchstore/%s' % VOL, 'cinder://a/b/%s' % VOL,
    'file:///tmp/%s' % VOL, 'rbd://%s' % VOL, 'cinder_plus://%s' % VOL,
    'cinder://gold/../%s' % VOL,
])
def test_bad_uris(conf, uri):
    with pytest.raises(exceptions.BadStoreUri):
        parse(conf, uri)


def test_uri_round_trip(conf):
    multi = location.StoreLocation({'volume_id': VOL}, conf,
                                   backend_group='gold')
    assert multi.get_uri() == 'cinder://gold/%s' % VOL
    legacy = location.StoreLocation({'volume_id': VOL}, conf)
    assert legacy.get_uri() == 'cinder://%s' % VOL

"""Options and plugin loading, in both glance_store configuration styles."""

from glance_store._drivers.cinder import store as builtin
from glance_store import backend
from glance_store import location as gs_location
from glance_store import multi_backend
from oslo_config import cfg
import pytest

from glance_cinder_store import options
from glance_cinder_store import store as store_mod


def test_shared_options_are_the_builtin_objects():
    for opt in builtin._CINDER_OPTS:
        assert any(o is opt for o in options.OPTIONS)
    names = [o.name for o in options.OUR_OPTS]
    assert all(n.startswith('cinder_plus_') for n in names)
    assert all(o.help and len(o.help) > 40 for o in options.OUR_OPTS)
    assert len(set(o.name for o in options.OPTIONS)) == len(options.OPTIONS)


def test_list_opts_for_the_generator():
    ((group, opts),) = options.list_opts()
    assert group == 'glance_store' and opts == options.OPTIONS


@pytest.fixture
def clean_maps():
    yield
    cfg.CONF.reset()
    cfg.CONF.clear()
    gs_location.SCHEME_TO_CLS_MAP.clear()
    gs_location.SCHEME_TO_CLS_BACKEND_MAP.clear()


ENABLED_BACKENDS = cfg.DictOpt('enabled_backends')


def _conf(tmp_path, text):
    # glance_store looks stores up through its global CONF, so these tests
    # use it too (and reset it afterwards).
    path = tmp_path / 'glance-api.conf'
    path.write_text(text)
    conf = cfg.CONF
    conf.reset()
    return conf, str(path)


def test_multi_store_loads_beside_builtin(tmp_path, clean_maps):
    conf, path = _conf(tmp_path, """
[DEFAULT]
enabled_backends = gold:cinder_plus, builtin:cinder
[glance_store]
default_backend = gold
[gold]
cinder_volume_type = gold-type
cinder_plus_state_dir = %s
[builtin]
cinder_store_auth_address = http://127.0.0.1:9/identity
cinder_store_user_name = glance
cinder_store_password = secret
cinder_store_project_name = service
""" % (tmp_path / 'state'))
    conf.register_opt(ENABLED_BACKENDS)
    conf(['--config-file', path], project='glance')
    multi_backend.register_store_opts(conf)   # no DuplicateOptError
    multi_backend.create_multi_stores(conf)
    gold = multi_backend.get_store_from_store_identifier('gold')
    assert isinstance(gold, store_mod.CinderStore)
    assert gold.store_conf.cinder_volume_type == 'gold-type'
    other = multi_backend.get_store_from_store_identifier('builtin')
    assert isinstance(other, builtin.Store)
    loc = gs_location.get_location_from_uri_and_backend(
        'cinder://gold/0b0e2f1c-6a53-4a52-9f43-3a2b1d6a1c11', 'gold',
        conf=conf)
    assert loc.store_location.volume_id.startswith('0b0e2f1c')


def test_backend_defaults_apply(tmp_path, clean_maps):
    conf, path = _conf(tmp_path, """
[DEFAULT]
enabled_backends = gold:cinder_plus
[glance_store]
default_backend = gold
[backend_defaults]
cinder_http_retries = 7
cinder_plus_io_queue_depth = 9
""")
    conf.register_opt(ENABLED_BACKENDS)
    conf(['--config-file', path], project='glance')
    multi_backend.register_store_opts(conf)
    multi_backend.create_multi_stores(conf)
    gold = multi_backend.get_store_from_store_identifier('gold')
    assert gold.store_conf.cinder_http_retries == 7
    assert gold.store_conf.cinder_plus_io_queue_depth == 9


def test_legacy_single_store(tmp_path, clean_maps):
    conf, path = _conf(tmp_path, """
[glance_store]
stores = cinder_plus
default_store = cinder
cinder_plus_state_dir = %s
""" % (tmp_path / 'state'))
    conf(['--config-file', path], project='glance')
    backend.register_opts(conf)
    backend.create_stores(conf)
    backend.verify_default_store()
    store = backend.get_store_from_scheme('cinder')
    assert isinstance(store, store_mod.CinderStore)
    assert store.url_prefix == 'cinder://'

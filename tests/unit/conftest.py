import socket

from glance_store import multi_backend
from oslo_config import cfg
import pytest

from glance_cinder_store import attach
from glance_cinder_store import store as store_mod
from tests.unit import fakes

VOLUME_TYPE = 'gold-type'


def make_conf(tmp_path, **overrides):
    conf = cfg.ConfigOpts()
    conf.register_opt(cfg.DictOpt('enabled_backends'))
    conf.set_override('enabled_backends',
                      {'gold': 'cinder_plus', 'silver': 'cinder_plus',
                       'builtin': 'cinder'})
    conf([], project='glance', default_config_files=[])
    multi_backend.register_store_opts(conf)
    values = dict(cinder_volume_type=VOLUME_TYPE,
                  cinder_store_auth_address='http://127.0.0.1/identity',
                  cinder_store_user_name='glance',
                  cinder_store_password='secret',
                  cinder_store_project_name='service',
                  cinder_plus_state_dir=str(tmp_path / 'state'),
                  cinder_plus_io_chunk_size=256 * 1024,
                  cinder_plus_self_heal_interval=0,
                  cinder_state_transition_timeout=2,
                  # tests that want the warm cache turn it on
                  cinder_plus_attach_grace_period=0,
                  cinder_plus_prestart_privsep=False)
    values.update(overrides)
    for key, value in values.items():
        conf.set_override(key, value, group='gold')
    return conf


class Context:
    project_id = 'proj-1'
    user_id = 'user-1'
    auth_token = 'token'
    service_catalog = []

    def to_dict(self):
        return {'project_id': self.project_id}


@pytest.fixture
def context():
    return Context()


@pytest.fixture
def cinder(tmp_path, monkeypatch):
    vols_dir = tmp_path / 'volumes'
    vols_dir.mkdir()
    fake = fakes.FakeVolumes(str(vols_dir), socket.gethostname())
    monkeypatch.setattr(attach.connectors, 'for_connection',
                        lambda info, **kw: fakes.FakeConnection(info, **kw))
    monkeypatch.setattr(attach.connector_base, 'host_connector',
                        lambda *a, **k: {'host': socket.gethostname()})
    fakes.FakeConnection.connected = {}
    fakes.FakeConnection.fail_connect = None
    return fake


@pytest.fixture
def make_store(tmp_path, cinder, monkeypatch):
    def make(**overrides):
        conf = make_conf(tmp_path, **overrides)
        store = store_mod.CinderStore(conf, backend='gold')
        monkeypatch.setattr(store, 'volumes', lambda context=None: cinder)
        store.configure()
        return store
    return make


@pytest.fixture
def store(make_store):
    return make_store()

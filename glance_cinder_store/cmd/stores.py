"""The cinder_plus stores of a glance-api configuration, for the tools."""

from glance_store import backend
from glance_store import multi_backend
from oslo_config import cfg

from glance_cinder_store import store as store_mod


def load(conf):
    """Our stores (store id -> CinderStore) in the parsed ``conf``."""
    conf.register_opt(cfg.DictOpt('enabled_backends'))
    stores = {}
    if conf.enabled_backends:
        multi_backend.register_store_opts(conf)
        for store_id, kind in conf.enabled_backends.items():
            if kind == store_mod.TYPE_NAME:
                stores[store_id] = store_mod.CinderStore(conf,
                                                         backend=store_id)
    else:
        backend.register_opts(conf)
        if store_mod.TYPE_NAME in conf.glance_store.stores:
            stores[store_mod.TYPE_NAME] = store_mod.CinderStore(conf)
    return stores

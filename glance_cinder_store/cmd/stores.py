"""Load the cinder_plus stores of a glance-api configuration, for tools."""

from glance_store import backend
from glance_store import multi_backend
from oslo_config import cfg

from glance_cinder_store import store as store_mod


def load(argv, description):
    """Parse ``argv`` (glance's --config-file ...) and return our stores."""
    conf = cfg.ConfigOpts()
    conf.register_cli_opt(cfg.BoolOpt('dry-run', default=False,
                                      help='Report, change nothing.'))
    conf.register_cli_opt(cfg.FloatOpt(
        'stale-after', default=None,
        help='Seconds without heartbeat after which an upload of another '
             'host counts as abandoned (default: '
             'cinder_plus_upload_stale_after; 0 never). Uploads of this '
             'host are judged by their process, never by age.'))
    conf.register_cli_opt(cfg.BoolOpt(
        'delete-saving-images', default=False,
        help='Delete, through Glance\'s API, images that a dead upload '
             'left in status saving (default: report them).'))
    conf.register_opt(cfg.DictOpt('enabled_backends'))
    conf(argv, project='glance', prog=description,
         default_config_files=cfg.find_config_files('glance', 'glance-api'))
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
    return conf, stores

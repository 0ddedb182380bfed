"""What the operator tools share: command line, logging, report, exit codes.

Each tool is a ``body(conf, stores)`` returning its exit status; ``run``
parses glance's ``--config-file`` options with the tool's own, sets up
oslo.log, loads the ``cinder_plus`` stores and turns errors into the
documented exit status (see the package docstring).
"""

import json
import logging
import os
import sys

from glance_store import exceptions
from oslo_config import cfg
from oslo_log import log

from glance_cinder_store.cmd import stores as stores_mod

LOG = log.getLogger(__name__)

#: The logger oslo.privsep relays its daemons' output to.
PRIVSEP_LOGGER = 'oslo.privsep.daemon'

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2

FORMAT_OPT = cfg.StrOpt('format', default='text', choices=('text', 'json'),
                        help='text: one line per result; json: one JSON '
                             'document on stdout.')


def parse(argv, prog, description, epilog, cli_opts):
    """The tool's configuration: glance-api's files plus its command line."""
    conf = cfg.ConfigOpts()
    conf.register_cli_opts(list(cli_opts) + [FORMAT_OPT])
    log.register_options(conf)
    conf(argv, project='glance', prog=prog, description=description,
         epilog=epilog,
         default_config_files=cfg.find_config_files('glance', 'glance-api'))
    return conf


def setup_logging(argv, cli_opts, prog):
    """oslo.log as the tool's command line alone says: stderr by default.

    glance-api.conf's [DEFAULT] logging (its log file, its debug level) is
    glance-api's own: the tool parses its command line again, without the
    configuration files, for the logging options.
    """
    conf = cfg.ConfigOpts()
    conf.register_cli_opts(list(cli_opts) + [FORMAT_OPT])
    log.register_options(conf)
    conf(_without_config_files(argv), project='glance', prog=prog,
         default_config_files=[])
    conf.set_default('use_stderr', not (conf.log_file or conf.log_dir))
    log.setup(conf, prog)
    logging.getLogger(PRIVSEP_LOGGER).addFilter(EventletNotice())
    if not conf.debug:
        # the report is the output; libraries' INFO lines would bury it
        for handler in logging.getLogger().handlers:
            if getattr(handler, 'stream', None) is sys.stderr:
                handler.setLevel(logging.WARNING)
    return conf


class EventletNotice(logging.Filter):
    """Drops eventlet's deprecation notice relayed from privsep daemons.

    A privsep daemon (ours, os-brick's) is a Python process started through
    sudo that imports eventlet, which prints a multi-line warning on its
    stderr; oslo.privsep relays each of its lines as a WARNING
    ``privsep log: ...``.  Nothing the operator can act on.
    """

    def __init__(self):
        super().__init__()
        self.inside = False

    def filter(self, record):
        line = record.getMessage().partition('privsep log: ')[2]
        if 'EventletDeprecationWarning' in line or line.startswith(
                'Eventlet is deprecated'):
            self.inside = True
        elif self.inside and line.strip() == 'import eventlet':
            self.inside = False
            return False
        return not self.inside


def _without_config_files(argv):
    files = ('--config-file', '--config-dir')
    kept, args = [], iter(argv)
    for arg in args:
        if arg in files:
            next(args, None)
        elif not arg.startswith(tuple(f + '=' for f in files)):
            kept.append(arg)
    return kept


def emit(conf, document, lines):
    """The report: ``document`` as JSON, or ``lines`` as text, on stdout."""
    if conf.format == 'json':
        json.dump(document, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write('\n')
    else:
        for line in lines:
            print(line)
    sys.stdout.flush()


def _share_lock_path(conf):
    """Give os-brick glance-api's [oslo_concurrency] lock_path (global)."""
    from oslo_concurrency import lockutils
    from oslo_concurrency import opts
    for group, options in opts.list_opts():
        conf.register_opts(options, group)
    if conf.oslo_concurrency.lock_path:
        lockutils.set_defaults(conf.oslo_concurrency.lock_path)


def run(body, argv, prog, description, epilog, cli_opts=(), as_root=True):
    """Run one tool; returns its exit status."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        conf = parse(argv, prog, description, epilog, cli_opts)
    except cfg.Error as e:
        print('%s: %s' % (prog, e), file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as e:
        if e.code in (0, None):     # --help
            raise
        return EXIT_USAGE           # argparse/oslo.config said why
    if not as_root and os.geteuid() == 0:
        print('%s must not run as root: run it as the glance-api user '
              '(e.g. sudo -u glance ...), whose state folder and privileges '
              'it shares' % prog, file=sys.stderr)
        return EXIT_USAGE
    setup_logging(argv, cli_opts, prog)
    _share_lock_path(conf)
    try:
        stores = stores_mod.load(conf)
    except (cfg.Error, exceptions.BadStoreConfiguration) as e:
        LOG.error('%s: configuration error: %s', prog, e)
        return EXIT_USAGE
    if not stores:
        LOG.error('%s: no cinder_plus store is configured in %s', prog,
                  ', '.join(conf.config_file) or 'the default glance-api '
                  'configuration files')
        return EXIT_USAGE
    try:
        return body(conf, stores)
    except KeyboardInterrupt:
        LOG.error('%s: interrupted', prog)
        return EXIT_PROBLEMS
    except Exception as e:
        LOG.debug('%s failed', prog, exc_info=True)
        LOG.error('%s failed: %s', prog, e)
        return EXIT_PROBLEMS

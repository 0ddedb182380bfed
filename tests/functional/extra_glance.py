"""A second glance-api, started by a test, beside the cloud's own.

Configurations the shared cloud must not serve to its users (a store whose
volume type does not exist, the legacy single-store mode, per-user mode)
run in a glance-api of their own: the cloud's glance-api.conf with the
test's changes, in ``/etc/glance/<name>`` (the privsep filters accept only
config files under /etc), served by uwsgi as user glance on a free port
from 9393 on, like tools/aio serves the main one.  It shares the database,
Keystone and Cinder, and is stopped by its PID when the test is done.
"""

import configparser
import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.request

from tests.functional import conftest as fx

GLANCE_ETC = os.path.dirname(fx.GLANCE_CONF)
VENV = os.path.join(fx.AIO_ROOT, 'venv')
LOGS = os.path.join(fx.AIO_ROOT, 'logs')
FIRST_PORT = 9393
UWSGI_INI = """[uwsgi]
module = glance.wsgi.api:application
env = OS_GLANCE_CONFIG_DIR={confdir}
virtualenv = {venv}
http-socket = 127.0.0.1:{port}
add-header = Connection: close
http-raw-body = true
http-chunked-input = true
http-auto-chunked = true
chunked-input-limit = 10485760
socket-timeout = 300
master = true
processes = 1
enable-threads = true
lazy-apps = true
die-on-term = true
exit-on-reload = false
hook-master-start = unix_signal:15 gracefully_kill_them_all
buffer-size = 65535
"""


def cloud_config():
    """The cloud's glance-api.conf, as sections of raw strings."""
    conf = configparser.RawConfigParser(default_section='__none__',
                                        strict=False, interpolation=None)
    conf.optionxform = str
    conf.read(fx.GLANCE_CONF)
    return {name: dict(conf[name]) for name in conf.sections()}


def _free_port():
    for port in range(FIRST_PORT, FIRST_PORT + 50):
        with socket.socket() as s:
            if s.connect_ex(('127.0.0.1', port)) != 0:
                return port
    raise RuntimeError('no free port from %d on' % FIRST_PORT)


def _render(sections):
    conf = configparser.RawConfigParser(default_section='__none__',
                                        interpolation=None)
    conf.optionxform = str
    for name, options in sections.items():
        conf[name] = options
    out = io.StringIO()
    conf.write(out)
    return out.getvalue()


class GlanceApi:
    """One extra glance-api; ``sections`` is its whole configuration."""

    def __init__(self, name, sections):
        self.name = name
        self.port = _free_port()
        self.url = 'http://127.0.0.1:%d' % self.port
        self.confdir = os.path.join(GLANCE_ETC, 'gcs-test-%s' % name)
        self.log = os.path.join(LOGS, 'glance-%s.log' % name)
        sections.setdefault('DEFAULT', {})['worker_self_reference_url'] = (
            self.url)
        self.sections = sections
        self.proc = None

    def _write_config(self):
        shutil.rmtree(self.confdir, ignore_errors=True)
        os.makedirs(self.confdir)
        shutil.chown(self.confdir, 'root', 'glance')
        os.chmod(self.confdir, 0o750)
        conf = os.path.join(self.confdir, 'glance-api.conf')
        with open(conf, 'w') as f:
            f.write(_render(self.sections))
        shutil.chown(conf, 'root', 'glance')
        os.chmod(conf, 0o640)
        shutil.copy(os.path.join(GLANCE_ETC, 'glance-api-paste.ini'),
                    self.confdir)
        with open(os.path.join(self.confdir, 'uwsgi.ini'), 'w') as f:
            f.write(UWSGI_INI.format(confdir=self.confdir, venv=VENV,
                                     port=self.port))

    def start(self, timeout=90):
        self._write_config()
        home = os.path.join(fx.AIO_ROOT, 'data', 'glance')
        cmd = ['setpriv', '--reuid=glance', '--regid=glance',
               '--init-groups', 'env', 'HOME=%s' % home,
               'PATH=%s/bin:/usr/sbin:/usr/bin:/sbin:/bin' % VENV,
               os.path.join(VENV, 'bin', 'uwsgi'), '--ini',
               os.path.join(self.confdir, 'uwsgi.ini')]
        with open(self.log, 'ab') as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log,
                                         start_new_session=True, cwd='/')

        def up_or_dead():
            return self._answers() or self.proc.poll() is not None
        try:
            fx.wait_for(up_or_dead, timeout, 0.3, 'glance-api %s' % self.name)
        except fx.common.TimedOut:
            pass
        if not self._answers():
            self.stop()
            raise RuntimeError('glance-api %s did not start (see %s)'
                               % (self.name, self.log))
        return self

    def _answers(self):
        try:
            urllib.request.urlopen(self.url + '/versions', timeout=2).close()
            return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def stop(self):
        """SIGTERM the uwsgi master; SIGKILL its process group if it lingers.

        The group (setsid at start: pgid = the master's pid) is ours alone:
        its workers and the privsep daemons they started.
        """
        if self.proc is not None:
            pgid = self.proc.pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(fx.common.TimedOut):
                fx.wait_for(lambda: not _group_alive(pgid), 15, 0.2)
            if _group_alive(pgid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
            if self.proc.poll() is None:
                self.proc.wait(10)
            self.proc = None
        shutil.rmtree(self.confdir, ignore_errors=True)


def _group_alive(pgid):
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % pid) as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        # fields: state ppid pgrp ...; a zombie is as good as gone
        if int(fields[2]) == pgid and fields[0] != 'Z':
            return True
    return False


@contextlib.contextmanager
def running(name, sections):
    """A glance-api with ``sections`` as config, for a ``with`` block."""
    api = GlanceApi(name, sections).start()
    try:
        yield api
    finally:
        api.stop()

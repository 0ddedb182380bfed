"""What the tools and the functional tests share about the all-in-one cloud.

One place for the cloud's credentials (``tools/aio env``), keystone
sessions, the loop devices bound to Cinder's volume files and waiting for
a condition.  Imports of the OpenStack libraries are deferred: tools/aio
runs parts of cloud.py before they are needed.
"""

import os
import re
import shlex
import subprocess

import tenacity

TOOLS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AIO = os.path.join(TOOLS, 'aio')
AIO_ROOT = os.environ.get('AIO_ROOT', '/opt/gcs-aio')
#: The volume files of tools/cinder_loop.
LOOP_DIR = os.path.join(AIO_ROOT, 'data', 'cinder', 'loop')
#: user -> project of the cloud's users (tools/aio's cloud.py makes them).
PROJECTS = {'admin': 'admin', 'demo': 'demo', 'other': 'other',
            'glance': 'service', 'cinder': 'service'}


def aio_env(user='admin', host=None):
    """The cloud's OS_* settings for ``user`` (Glance of host ``host``).

    ``tools/aio env``'s, or with GCS_CLOUD=external the environment's (an
    admin's OS_* variables; GCS_PASSWORD for the other users).
    """
    if os.environ.get('GCS_CLOUD') == 'external':
        return dict(os.environ)
    out = subprocess.run([AIO, 'env', user] + (
        ['--host', str(host)] if host else []),
        capture_output=True, text=True, check=True).stdout
    env = {}
    for line in out.splitlines():
        m = re.match(r'export (\w+)=(.*)$', line)
        if m:
            env[m.group(1)] = shlex.split(m.group(2))[0] if m.group(2) else ''
    return env


def session(user='admin', project=None, password=None, auth_url=None,
            env=None):
    """A keystoneauth session as ``user`` of the cloud."""
    from keystoneauth1.identity import v3
    from keystoneauth1 import session as ks_session
    if password is None or auth_url is None:
        env = env or aio_env()
        auth_url = auth_url or env['OS_AUTH_URL']
        if password is None:
            password = (env['OS_PASSWORD'] if user == 'admin' else
                        os.environ.get('GCS_PASSWORD', env['OS_PASSWORD']))
    auth = v3.Password(auth_url=auth_url, username=user, password=password,
                       project_name=project or PROJECTS[user],
                       user_domain_name='Default',
                       project_domain_name='Default')
    return ks_session.Session(auth=auth)


def loop_devices(under=None):
    """{loop device: backing file} bound now; only files below ``under``."""
    out = subprocess.run(['losetup', '--list', '--noheadings', '--output',
                          'NAME,BACK-FILE'], capture_output=True, text=True)
    found = {}
    for line in out.stdout.splitlines():
        device, _, backing = line.strip().partition(' ')
        backing = backing.strip()
        if device and (under is None or backing.startswith(under)):
            found[device] = backing
    return found


class TimedOut(AssertionError):
    """A condition did not hold in time (an AssertionError for tests)."""


def wait_for(predicate, timeout=120, interval=0.5, what='condition'):
    """Call ``predicate`` until it returns a true value, and return that.

    An exception from ``predicate`` ends the wait at once; ``TimedOut``
    after ``timeout`` seconds.
    """
    def timed_out(state):
        raise TimedOut('timed out after %ss waiting for %s' % (timeout, what))
    return tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda value: not value),
        wait=tenacity.wait_fixed(interval),
        stop=tenacity.stop_after_delay(timeout),
        retry_error_callback=timed_out)(predicate)


def wait_volume_gone(cinder, volume_id, timeout=120, interval=0.5):
    """Wait until Cinder no longer knows ``volume_id`` (deleted)."""
    from cinderclient import exceptions

    def gone():
        try:
            cinder.volumes.get(volume_id)
        except exceptions.NotFound:
            return True
        return False
    return wait_for(gone, timeout, interval, 'volume %s deleted' % volume_id)

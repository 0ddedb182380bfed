"""API-side steps of tools/aio, run with the aio venv's python.

One process does what would otherwise be dozens of `openstack` CLI calls
(each costs ~2 s of start-up).  Settings come from the environment that
tools/aio exports (AIO_IP, AIO_PASSWORD, ...).

  cloud.py keystone-setup      projects, users, roles, services, endpoints;
                               prints the ids tools/aio needs as KEY=VALUE
  cloud.py cinder-setup        volume types and lifted quotas
  cloud.py cinder-store-types  volume types naming a glance store (glance up)
  cloud.py wait-queue NAME S   wait until RabbitMQ queue NAME has a consumer
  cloud.py wait-http URL S     wait until URL answers (any HTTP status)
  cloud.py status              one line per API service; exit 1 if one fails
"""

import os
import socket
import sys
import urllib.error
import urllib.request

from aio_lib import common
from aio_lib import names

IP = os.environ.get('AIO_IP', '127.0.0.1')
PASSWORD = os.environ.get('AIO_PASSWORD', 'aio-secret')
AUTH_URL = 'http://%s:5000/v3' % IP
REGION = 'RegionOne'
BACKEND = os.environ.get('AIO_CINDER_BACKEND', 'loop')

# user -> (project, roles); the admin user comes from keystone-manage bootstrap
USERS = {
    'glance': ('service', ['admin', 'service']),
    'cinder': ('service', ['admin', 'service']),
    'cinder-internal': ('cinder-internal', ['member']),
    'demo': ('demo', ['member', 'reader']),
    'other': ('other', ['member', 'reader']),
}
CINDER_URL = 'http://%s:8776/v3/%%(project_id)s' % IP
SERVICES = {  # name: (type, url); Cinder under both types, as devstack does
    'cinder': ('block-storage', CINDER_URL),
    'cinderv3': ('volumev3', CINDER_URL),
    'glance': ('image', 'http://%s:9292' % IP),
}
IMAGE_TYPE_SPECS = {'volume_backend_name': BACKEND,
                    'multiattach': '<is> True'}
VOLUME_TYPES = {name: dict(IMAGE_TYPE_SPECS)
                for name in names.TYPES.values()}
if os.environ.get('AIO_CEPH', '1') == '1':
    # Cinder's second backend, on the one-node Ceph (tools/aio_lib/ceph.sh)
    VOLUME_TYPES.update({
        name: dict(IMAGE_TYPE_SPECS, volume_backend_name=names.CEPH_BACKEND)
        for name in names.CEPH_TYPES.values()})
# one host at a time (tests/functional/test_multihost.py)
VOLUME_TYPES[names.SINGLE_TYPE] = {'volume_backend_name': BACKEND}
# created once glance answers: cinder validates the store id against glance
STORE_VOLUME_TYPES = {
    names.TO_SILVER_TYPE: {'volume_backend_name': BACKEND,
                           'image_service:store_id': names.SILVER},
}


def session(user='admin'):
    return common.session(user, password=PASSWORD, auth_url=AUTH_URL)


def _find_or_create(manager, name, **kwargs):
    for item in manager.list(name=name):
        if item.name == name:
            return item
    return manager.create(name=name, **kwargs)


def keystone_setup():
    from keystoneclient.v3 import client
    ks = client.Client(session=session(), region_name=REGION)
    roles = {r.name: r for r in ks.roles.list()}
    for name in ('admin', 'member', 'reader', 'service'):
        if name not in roles:
            roles[name] = ks.roles.create(name=name)
    projects = {}
    for name in sorted({p for p, _ in USERS.values()}):
        projects[name] = _find_or_create(ks.projects, name, domain='default')
    users = {}
    for name, (project, role_names) in USERS.items():
        users[name] = _find_or_create(ks.users, name, domain='default',
                                      password=PASSWORD,
                                      default_project=projects[project])
        for role in role_names:
            ks.roles.grant(roles[role], user=users[name],
                           project=projects[project])
    for name, (stype, url) in SERVICES.items():
        service = next((s for s in ks.services.list(type=stype)), None)
        if service is None:
            service = ks.services.create(name=name, type=stype)
        have = {e.interface for e in ks.endpoints.list(service=service)}
        for interface in ('public', 'internal', 'admin'):
            if interface not in have:
                ks.endpoints.create(service, url, interface=interface,
                                    region=REGION)
    print('INTERNAL_PROJECT_ID=%s' % projects['cinder-internal'].id)
    print('INTERNAL_USER_ID=%s' % users['cinder-internal'].id)


def _volume_types(sess, types):
    from cinderclient import client as cinder_client
    cinder = cinder_client.Client('3.70', session=sess, region_name=REGION)
    existing = {t.name: t for t in cinder.volume_types.list(is_public=None)}
    for name, specs in types.items():
        vtype = existing.get(name) or cinder.volume_types.create(name)
        if vtype.get_keys() != specs:
            vtype.set_keys(specs)
    return cinder


def cinder_setup():
    from keystoneclient.v3 import client
    sess = session()
    cinder = _volume_types(sess, VOLUME_TYPES)
    ks = client.Client(session=sess, region_name=REGION)
    for project in ks.projects.list():
        cinder.quotas.update(project.id, volumes=-1, gigabytes=-1,
                             snapshots=-1, backups=-1, backup_gigabytes=-1,
                             per_volume_gigabytes=-1, groups=-1)


def _wait(predicate, timeout, what):
    try:
        common.wait_for(predicate, float(timeout), interval=0.3, what=what)
    except common.TimedOut as e:
        sys.exit(str(e))


def wait_queue(queue, timeout):
    """Wait until `queue` exists on RabbitMQ and has a consumer."""
    import amqp

    def consumed():
        try:
            with amqp.Connection('%s:5672' % IP, userid='guest',
                                 password='guest', connect_timeout=2) as c:
                return c.channel().queue_declare(queue, passive=True)[2]
        except (amqp.exceptions.NotFound, OSError):
            return 0
    _wait(consumed, timeout, 'a consumer on queue %s' % queue)


def wait_http(url, timeout):
    """Wait until ``url`` answers, whatever its HTTP status."""
    def answers():
        try:
            urllib.request.urlopen(url, timeout=2).close()
        except urllib.error.HTTPError:
            pass
        except (urllib.error.URLError, OSError):
            return False
        return True
    _wait(answers, timeout, url)


def _configured_backends():
    """Backends cinder.conf enables now.

    A service of a backend removed from the configuration stays registered
    (down) and is not ours to judge.
    """
    import configparser
    conf = configparser.ConfigParser(interpolation=None, strict=False)
    root = os.environ.get('AIO_ROOT', '/opt/gcs-aio')
    if not conf.read(os.path.join(root, 'etc', 'cinder', 'cinder.conf')):
        return None
    value = conf.get('DEFAULT', 'enabled_backends', fallback='')
    return {b.strip() for b in value.split(',') if b.strip()} or None


def status():
    ok = True

    def line(name, good, detail):
        nonlocal ok
        ok = ok and good
        print('%-17s %-4s %s' % (name, 'ok' if good else 'FAIL', detail))

    for name, port in (('mariadb', 3306), ('rabbitmq', 5672)):
        try:
            socket.create_connection((IP, port), timeout=2).close()
            line(name, True, '%s:%d accepting' % (IP, port))
        except OSError as exc:
            line(name, False, str(exc))
    try:
        sess = session()
        token = sess.get_token()
        line('keystone', True, '%s token %s...' % (AUTH_URL, token[:8]))
    except Exception as exc:  # noqa: BLE001 - report, do not crash
        line('keystone', False, repr(exc)[:120])
        return 1
    try:
        from cinderclient import client as cinder_client
        cinder = cinder_client.Client('3.0', session=sess, region_name=REGION)
        services = cinder.services.list()
        line('cinder-api', True, 'http://%s:8776/v3' % IP)
        backends = _configured_backends()
        for binary in ('cinder-scheduler', 'cinder-volume'):
            mine = [s for s in services if s.binary == binary and (
                binary != 'cinder-volume' or backends is None or
                s.host.partition('@')[2] in backends)]
            up = mine and all(s.state == 'up' and s.status == 'enabled'
                              for s in mine)
            line(binary, bool(up), ', '.join(
                '%s %s/%s' % (s.host, s.status, s.state) for s in mine)
                or 'not registered')
    except Exception as exc:  # noqa: BLE001
        line('cinder-api', False, repr(exc)[:120])
    try:
        resp = sess.get('http://%s:9292/v2/images?limit=1' % IP)
        line('glance-api', resp.status_code == 200,
             'http://%s:9292/v2/images -> %s' % (IP, resp.status_code))
    except Exception as exc:  # noqa: BLE001
        line('glance-api', False, repr(exc)[:120])
    return 0 if ok else 1


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ''
    if cmd == 'keystone-setup':
        keystone_setup()
    elif cmd == 'cinder-setup':
        cinder_setup()
    elif cmd == 'cinder-store-types':
        _volume_types(session(), STORE_VOLUME_TYPES)
    elif cmd == 'wait-queue':
        wait_queue(argv[2], argv[3])
    elif cmd == 'wait-http':
        wait_http(argv[2], argv[3])
    elif cmd == 'status':
        return status()
    else:
        sys.exit(__doc__)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))

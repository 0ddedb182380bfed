"""The devstack plugin, run in bash against a fake devstack.

devstack cannot run here, so its functions (iniset, iniget, setup_develop,
sudo, openstack...) are shell functions that log what they are asked to do;
the test reads the logs back: the settings each config file ends up with,
and the commands run.
"""

import os
import subprocess

import pytest

ROOT = os.path.join(os.path.dirname(__file__), '..', '..')
PLUGIN = os.path.join(ROOT, 'devstack', 'plugin.sh')
SETTINGS = os.path.join(ROOT, 'devstack', 'settings')

# devstack's functions, faked.  iniset appends "file|section|option|value"
# to $LOG_INI; iniget answers the last value set; the rest log their
# arguments to $LOG_CMD.
FAKE_DEVSTACK = r'''
set -e
function trueorfalse {
    local default=$1 value=${!2}
    case "${value:-$default}" in
        1|yes|Yes|YES|true|True|TRUE|on|On|ON) echo True ;;
        *) echo False ;;
    esac
}
function iniset {
    [[ "$1" == "-sudo" ]] && shift
    echo "$1|$2|$3|$4" >> "$LOG_INI"
}
function iniget {
    grep -F "$1|$2|$3|" "$LOG_INI" 2>/dev/null | tail -n 1 |
        cut -d'|' -f4-
}
function is_service_enabled {
    local s
    for s in "$@"; do
        [[ ",$ENABLED_SERVICES," == *",$s,"* ]] && return 0
        [[ $s == glance && ",$ENABLED_SERVICES" == *",g-"* ]] && return 0
        [[ $s == cinder && ",$ENABLED_SERVICES" == *",c-"* ]] && return 0
    done
    return 1
}
function log_cmd { echo "$*" >> "$LOG_CMD"; }
function setup_develop { log_cmd setup_develop "$@"; }
function add_sudo_secure_path { log_cmd add_sudo_secure_path "$@"; }
function configure_cinder_internal_tenant {
    log_cmd configure_cinder_internal_tenant
}
function echo_summary { :; }
function die { log_cmd die "$@"; exit 1; }
function openstack {
    log_cmd openstack "$@"
    # no volume type exists yet
    [[ "$2 $3 $4" != *"volume type show"* ]]
}
function sudo {
    log_cmd sudo "$@"
    if [[ "$1" == "mv" ]]; then
        "$@"
    fi
}
'''


@pytest.fixture
def devstack(tmp_path):
    """Runs ``plugin.sh <args>`` with env overrides; returns the logs."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for tool in ('glance-cinder-store-check', 'glance-cinder-store-cleanup'):
        path = bin_dir / tool
        path.write_text('#!/bin/bash\necho %s "$@" >> "$LOG_CMD"\n' % tool)
        path.chmod(0o755)
    env = {
        'PATH': os.environ['PATH'],
        'LOG_INI': str(tmp_path / 'ini.log'),
        'LOG_CMD': str(tmp_path / 'cmd.log'),
        'DEST': '/opt/stack',
        'DATA_DIR': str(tmp_path / 'data'),
        'STACK_USER': 'stack',
        'ENABLED_SERVICES': 'key,g-api,c-api,c-sch,c-vol',
        'GLANCE_BIN_DIR': str(bin_dir),
        'GLANCE_CONF_DIR': '/etc/glance',
        'GLANCE_API_CONF': '/etc/glance/glance-api.conf',
        'GLANCE_NFS_MOUNTPOINT': str(tmp_path / 'mnt'),
        'CINDER_CONF': '/etc/cinder/cinder.conf',
        'KEYSTONE_SERVICE_URI': 'http://10.0.0.5/identity',
        'KEYSTONE_SERVICE_URI_V3': 'http://10.0.0.5/identity/v3',
        'SERVICE_PASSWORD': 'secret',
        'SERVICE_PROJECT_NAME': 'service',
        'SERVICE_DOMAIN_NAME': 'Default',
        'REGION_NAME': 'RegionOne',
        'GLANCE_ENABLE_MULTIPLE_STORES': 'True',
        'GLANCE_CINDER_PLUS_SUDOERS': str(tmp_path / 'sudoers'),
    }

    def run(*args, seed=(), **overrides):
        with open(env['LOG_INI'], 'w') as f:
            f.writelines('|'.join(item) + '\n' for item in seed)
        open(env['LOG_CMD'], 'w').close()
        script = (FAKE_DEVSTACK + 'source "%s"\nsource "%s" %s\n'
                  % (SETTINGS, PLUGIN, ' '.join(args)))
        done = subprocess.run(['bash', '-c', script], env=dict(
            env, **overrides), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return Logs(env['LOG_INI'], env['LOG_CMD'], tmp_path)

    return run


class Logs:
    def __init__(self, ini_log, cmd_log, tmp_path):
        self.ini = {}
        with open(ini_log) as f:
            for line in f:
                path, section, option, value = line.rstrip('\n').split(
                    '|', 3)
                self.ini.setdefault(path, {}).setdefault(
                    section, {})[option] = value
        with open(cmd_log) as f:
            self.commands = f.read().splitlines()
        self.tmp_path = tmp_path

    def glance(self, section):
        return self.ini['/etc/glance/glance-api.conf'].get(section, {})

    def cinder(self, section):
        return self.ini['/etc/cinder/cinder.conf'].get(section, {})


def test_install_phase_installs_package_filters_and_sudoers(devstack):
    logs = devstack('stack', 'install', seed=[(
        '/etc/glance/rootwrap.conf', 'DEFAULT', 'exec_dirs',
        '/sbin,/usr/bin')])
    assert 'setup_develop /opt/stack/glance-cinder-store' in logs.commands
    assert any(c.startswith('sudo install') and c.endswith(
        'etc/rootwrap.d/glance_cinder_plus.filters /etc/glance/rootwrap.d/')
        for c in logs.commands), logs.commands
    bin_dir = str(logs.tmp_path / 'bin')
    assert logs.ini['/etc/glance/rootwrap.conf']['DEFAULT'][
        'exec_dirs'] == '/sbin,/usr/bin,' + bin_dir
    sudoers = (logs.tmp_path / 'sudoers').read_text()
    assert sudoers == ('stack ALL = (root) NOPASSWD: %s/glance-rootwrap '
                       '/etc/glance/rootwrap.conf *\n' % bin_dir)
    assert 'add_sudo_secure_path %s' % bin_dir in logs.commands


def test_post_config_adds_multi_stores_beside_devstacks_own(devstack):
    logs = devstack('stack', 'post-config', seed=[
        ('/etc/glance/glance-api.conf', 'DEFAULT', 'enabled_backends',
         'fast:file'),
        ('/etc/glance/glance-api.conf', 'glance_store', 'default_backend',
         'fast'),
        ('/etc/cinder/cinder.conf', 'DEFAULT', 'allowed_direct_url_schemes',
         'file')],
        GLANCE_CINDER_PLUS_STORES='gold:lvmdriver-1,silver:nfs-1')
    assert logs.glance('DEFAULT')['enabled_backends'] == (
        'fast:file,gold:cinder_plus,silver:cinder_plus')
    assert logs.glance('glance_store')['default_backend'] == 'gold'
    gold = logs.glance('gold')
    assert gold['cinder_volume_type'] == 'glance-gold'
    assert gold['cinder_store_auth_address'] == 'http://10.0.0.5/identity/v3'
    assert gold['cinder_store_user_name'] == 'glance'
    assert gold['cinder_store_password'] == 'secret'
    assert gold['cinder_store_project_name'] == 'service'
    assert gold['cinder_store_user_domain_name'] == 'Default'
    assert gold['rootwrap_config'] == '/etc/glance/rootwrap.conf'
    assert gold['cinder_plus_state_dir'].endswith('/glance/cinder-plus')
    assert gold['cinder_do_extend_attached'] == 'False'
    # unset: the driver's own default
    assert 'cinder_plus_attach_grace_period' not in gold
    assert 'cinder_mount_point_base' not in gold
    silver = logs.glance('silver')
    assert silver['cinder_volume_type'] == 'glance-silver'
    assert silver['cinder_mount_point_base'].endswith('/mnt')
    # Cinder: clone paths for the stores' backends
    assert logs.cinder('DEFAULT')['allowed_direct_url_schemes'] == (
        'file,cinder')
    glance = logs.cinder('glance')
    assert glance['auth_url'] == 'http://10.0.0.5/identity'
    assert glance['username'] == 'cinder'
    assert glance['auth_type'] == 'password'
    for backend in ('lvmdriver-1', 'nfs-1'):
        section = logs.cinder(backend)
        assert section['image_upload_use_cinder_backend'] == 'True'
        assert section['image_upload_use_internal_tenant'] == 'False'
    assert 'configure_cinder_internal_tenant' not in logs.commands


def test_post_config_twice_changes_nothing_more(devstack):
    first = devstack('stack', 'post-config')
    seed = [('/etc/glance/glance-api.conf', 'DEFAULT', 'enabled_backends',
             first.glance('DEFAULT')['enabled_backends']),
            ('/etc/cinder/cinder.conf', 'DEFAULT',
             'allowed_direct_url_schemes',
             first.cinder('DEFAULT')['allowed_direct_url_schemes'])]
    again = devstack('stack', 'post-config', seed=seed)
    assert again.glance('DEFAULT')['enabled_backends'] == (
        'cinder_plus:cinder_plus')
    assert again.cinder('DEFAULT')['allowed_direct_url_schemes'] == 'cinder'


def test_post_config_legacy_uses_the_first_store_only(devstack):
    logs = devstack('stack', 'post-config', seed=[
        ('/etc/glance/glance-api.conf', 'glance_store', 'stores',
         'cinder, file, http')],
        GLANCE_ENABLE_MULTIPLE_STORES='False',
        GLANCE_CINDER_PLUS_STORES='gold:lvmdriver-1,silver:nfs-1',
        GLANCE_CINDER_PLUS_INTERNAL_TENANT='True')
    store = logs.glance('glance_store')
    # the built-in driver would claim cinder:// as well: it goes
    assert store['stores'] == 'file,http,cinder_plus'
    assert store['default_store'] == 'cinder'
    assert store['cinder_volume_type'] == 'glance-gold'
    assert 'enabled_backends' not in logs.glance('DEFAULT')
    assert 'silver' not in logs.ini['/etc/glance/glance-api.conf']
    assert 'nfs-1' not in logs.ini['/etc/cinder/cinder.conf']
    assert logs.cinder('lvmdriver-1')[
        'image_upload_use_internal_tenant'] == 'True'
    assert 'configure_cinder_internal_tenant' in logs.commands


def test_without_clone_cinder_is_left_alone(devstack):
    logs = devstack('stack', 'post-config', GLANCE_CINDER_PLUS_CLONE='False',
                    GLANCE_CINDER_PLUS_GRACE_PERIOD='2')
    assert '/etc/cinder/cinder.conf' not in logs.ini
    store = logs.glance('cinder_plus')
    assert store['cinder_volume_type'] == 'glance-cinder_plus'
    assert store['cinder_plus_attach_grace_period'] == '2'


def test_extra_creates_volume_types_then_checks(devstack):
    logs = devstack('stack', 'extra',
                    GLANCE_CINDER_PLUS_STORES='gold:lvmdriver-1,silver:ceph',
                    GLANCE_CINDER_PLUS_MULTIATTACH='True')
    cmds = logs.commands
    assert ('openstack --os-region-name=RegionOne volume type create '
            '--property volume_backend_name=lvmdriver-1 glance-gold') in cmds
    assert ('openstack --os-region-name=RegionOne volume type create '
            '--property volume_backend_name=ceph glance-silver') in cmds
    assert ('openstack --os-region-name=RegionOne volume type set '
            '--property multiattach=<is> True glance-silver') in cmds
    assert ('openstack --os-region-name=RegionOne quota set --volumes 50 '
            'service') in cmds
    check = [c for c in cmds if c.startswith('glance-cinder-store-check')]
    assert check == ['glance-cinder-store-check --config-file '
                     '/etc/glance/glance-api.conf --attach-test']
    assert cmds.index(check[0]) > max(
        i for i, c in enumerate(cmds) if c.startswith('openstack'))


def test_unstack_cleans_up_and_clean_removes_files(devstack):
    logs = devstack('unstack')
    assert logs.commands == ['glance-cinder-store-cleanup --config-file '
                             '/etc/glance/glance-api.conf']
    logs = devstack('clean')
    removed = ' '.join(logs.commands)
    assert 'glance/cinder-plus' in removed
    assert str(logs.tmp_path / 'sudoers') in removed
    assert '/etc/glance/rootwrap.d/glance_cinder_plus.filters' in removed


@pytest.mark.parametrize('services', ['key,c-api,c-vol', 'key,g-api'])
def test_nothing_happens_without_glance_and_cinder(devstack, services):
    for phase in ('install', 'post-config', 'extra'):
        logs = devstack('stack', phase, ENABLED_SERVICES=services)
        assert logs.ini == {} and logs.commands == []

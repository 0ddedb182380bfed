"""Credentials, endpoints, microversions, status waits and error mapping."""

from unittest import mock

from cinderclient import api_versions
from cinderclient import exceptions as cinder_exc
from glance_store import exceptions
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import identity
import pytest

from glance_cinder_store import cinder


@pytest.fixture
def conf(make_store):
    return make_store().store_conf


@pytest.fixture
def version(monkeypatch):
    highest = {'v': api_versions.APIVersion('3.70')}
    monkeypatch.setattr(cinder.api_versions, 'get_highest_version',
                        lambda client: highest['v'])
    return highest


def test_service_credentials_password(conf, version):
    factory = cinder.CinderClientFactory(conf)
    assert factory.uses_service_credentials
    client = factory.client()
    assert isinstance(factory.session().auth, identity.V3Password)
    assert client.api_version.get_string() == '3.54'
    assert factory.online_extend_supported


def test_application_credential(make_store, version):
    conf = make_store(cinder_store_application_credential_id='ac',
                      cinder_store_application_credential_secret='s',
                      cinder_store_user_name=None).store_conf
    factory = cinder.CinderClientFactory(conf)
    assert factory.uses_service_credentials
    assert isinstance(factory.session().auth,
                      identity.V3ApplicationCredential)


def test_session_is_per_store_not_global(make_store, version):
    a = cinder.CinderClientFactory(make_store().store_conf)
    b = cinder.CinderClientFactory(make_store().store_conf)
    assert a.session() is a.session()
    assert a.session() is not b.session()


def test_user_token_from_catalog(make_store, context, version):
    conf = make_store(cinder_store_user_name=None,
                      cinder_store_password=None).store_conf
    factory = cinder.CinderClientFactory(conf)
    assert not factory.uses_service_credentials
    context.service_catalog = [{
        'type': 'volumev3', 'name': 'cinderv3',
        'endpoints': [{'publicURL': 'http://127.0.0.1:8776/v3/proj-1',
                       'region': 'RegionOne'}]}]
    client = factory.client(context)
    auth = client.client.auth
    assert auth.endpoint == 'http://127.0.0.1:8776/v3/proj-1'
    assert auth.token == 'token'


def test_user_token_endpoint_template(make_store, context, version):
    conf = make_store(
        cinder_store_user_name=None, cinder_store_password=None,
        cinder_endpoint_template='http://127.0.0.1:8776/v3/%(project_id)s'
    ).store_conf
    client = cinder.CinderClientFactory(conf).client(context)
    assert client.client.auth.endpoint == 'http://127.0.0.1:8776/v3/proj-1'


def test_user_token_needs_a_context(make_store, version):
    conf = make_store(cinder_store_user_name=None).store_conf
    with pytest.raises(exceptions.BadStoreConfiguration, match='context'):
        cinder.CinderClientFactory(conf).client(None)


def test_catalog_without_cinder_is_a_clear_error(make_store, context,
                                                 version):
    conf = make_store(cinder_store_user_name=None).store_conf
    with pytest.raises(exceptions.BadStoreConfiguration,
                       match='cinder_catalog_info'):
        cinder.CinderClientFactory(conf).client(context)


def test_too_old_cinder_is_refused(conf, version):
    version['v'] = api_versions.APIVersion('3.27')
    with pytest.raises(exceptions.BackendException, match='3.54'):
        cinder.CinderClientFactory(conf).client()


@pytest.mark.parametrize('error,expected', [
    (cinder_exc.NotFound(404), exceptions.NotFound),
    (cinder_exc.OverLimit(413), exceptions.StorageFull),
    (cinder_exc.Forbidden(403), exceptions.Forbidden),
    (cinder_exc.ClientException(500), exceptions.BackendException),
    (ks_exc.ConnectFailure('refused'), exceptions.BackendException),
])
def test_errors_are_translated(error, expected):
    with pytest.raises(expected):
        with cinder.translated_errors('doing x'):
            raise error


class Vol:
    def __init__(self, status):
        self.id = 'v1'
        self.status = status


def volumes_with(statuses, timeout=5):
    client = mock.Mock()
    client.volumes.get.side_effect = [Vol(s) for s in statuses]
    return cinder.Volumes(client, timeout)


def test_wait_for_reaches_status():
    vols = volumes_with(['creating', 'creating', 'available'])
    assert vols.wait_for(Vol('creating'), 'available',
                         ('creating',)).status == 'available'


def test_wait_for_fails_fast_on_error():
    vols = volumes_with(['creating', 'error', 'available'])
    with pytest.raises(cinder.VolumeFailed, match='is error'):
        vols.wait_for(Vol('creating'), 'available', ('creating',))


def test_wait_for_times_out():
    client = mock.Mock()
    client.volumes.get.return_value = Vol('creating')
    vols = cinder.Volumes(client, timeout=0.3)
    with pytest.raises(cinder.VolumeFailed, match='timed out'):
        vols.wait_for(Vol('creating'), 'available', ('creating',))


def test_wait_for_does_not_look_at_a_volume_it_was_just_given():
    vols = volumes_with(['available'])
    with mock.patch('time.sleep') as sleep:
        vols.wait_for(Vol('creating'), 'available', ('creating',))
    sleep.assert_called_once_with(cinder.POLL)
    assert vols.client.volumes.get.call_count == 1


def test_wait_for_first_looks_after_most_of_the_usual_time():
    """Creates that took ~0.4 s: one GET at 0.3 s, not one every 50 ms."""
    settling = cinder.Settling()
    for seconds in (0.5, 0.4, 0.4, 0.3, 3.0):
        settling.record('creating', seconds)
    client = mock.Mock()
    client.volumes.get.side_effect = [Vol('creating'), Vol('available')]
    vols = cinder.Volumes(client, 5, settling=settling)
    with mock.patch('time.sleep') as sleep:
        vols.wait_for(Vol('creating'), 'available', ('creating',))
    assert [c.args[0] for c in sleep.call_args_list] == [
        pytest.approx(0.3), cinder.POLL]
    assert client.volumes.get.call_count == 2


def test_settling_learns_per_status_and_is_bounded():
    settling = cinder.Settling()
    settling.record('creating', 60)
    assert settling.first_wait('creating') == settling.MAX_FIRST
    assert settling.first_wait('extending') == cinder.POLL
    settling.record('extending', 0.01)
    assert settling.first_wait('extending') == cinder.POLL
    for _ in range(settling.SAMPLES):
        settling.record('creating', 0.2)     # the old sample ages out
    assert settling.first_wait('creating') == pytest.approx(0.15)


def test_wait_for_learns_only_from_waits_that_ended_well():
    settling = cinder.Settling()
    client = mock.Mock()
    client.volumes.get.side_effect = [Vol('error'), Vol('available')]
    vols = cinder.Volumes(client, 5, settling=settling)
    with mock.patch('time.sleep'):
        with pytest.raises(cinder.VolumeFailed):
            vols.wait_for(Vol('creating'), 'available', ('creating',))
        vols.wait_for(Vol('creating'), 'available', ('creating',))
    assert len(settling._seen['creating']) == 1


def test_wait_for_looks_at_once_at_a_volume_of_a_settled_status():
    vols = volumes_with(['in-use'])
    with mock.patch('time.sleep') as sleep:
        vols.wait_for(Vol('in-use'), 'in-use', ('extending',))
    sleep.assert_not_called()


def test_attachment_delete_tolerates_gone():
    client = mock.Mock()
    client.attachments.delete.side_effect = cinder_exc.NotFound(404)
    cinder.Volumes(client, 1).attachment_delete('a1')


def test_retries_are_configured(conf, version):
    client = cinder.CinderClientFactory(conf).client()
    assert client.client.status_code_retries == conf.cinder_http_retries
    assert 503 in client.client.retriable_status_codes
    assert 500 not in client.client.retriable_status_codes


def test_attachment_create_retries_while_volume_is_busy():
    client = mock.Mock()
    busy = cinder_exc.BadRequest(
        400, 'Invalid volume: status must be available or in-use or '
        'downloading to reserve, but the current status is attaching.')
    client.attachments.create.side_effect = [busy, busy, {'id': 'a1'}]
    assert cinder.Volumes(client, 1).attachment_create('v', 'ro') == {
        'id': 'a1'}
    client.attachments.create.side_effect = [busy] * 10
    with pytest.raises(exceptions.BackendException, match='attaching'):
        cinder.Volumes(client, 1, attach_retries=2).attachment_create(
            'v', 'ro')
    assert client.attachments.create.call_count == 3 + 3


def test_attachment_create_keeps_trying_for_the_minimum_busy_wait():
    """Another host lets go at its next release check: wait that long."""
    client = mock.Mock()
    busy = cinder_exc.BadRequest(
        400, 'Invalid volume: status must be available or in-use or '
        'downloading to reserve, but the current status is in-use.')
    client.attachments.create.side_effect = [busy] * 3 + [{'id': 'a1'}]
    volumes = cinder.Volumes(client, 1, attach_retries=1, busy_min_wait=1.0)
    with mock.patch.object(volumes, 'request_release'):
        assert volumes.attachment_create('v', 'ro') == {'id': 'a1'}
    assert client.attachments.create.call_count == 4


def test_list_all_falls_back_to_own_project_when_forbidden():
    client = mock.Mock()
    client.volumes.list.side_effect = [cinder_exc.Forbidden(403), ['mine']]
    assert cinder.Volumes(client, 1).list_all() == ['mine']
    assert client.volumes.list.call_args_list == [
        mock.call(search_opts={'all_tenants': 1}),
        mock.call(search_opts=None)]


def test_a_refused_listing_of_all_projects_is_not_asked_again_for_an_hour(
        monkeypatch):
    """A non-admin service user: one 403, not one per warm-cache check."""
    now = [1000.0]
    monkeypatch.setattr(cinder.time, 'monotonic', lambda: now[0])
    client = mock.Mock()
    client.volumes.list.side_effect = [cinder_exc.Forbidden(403), ['mine'],
                                       ['mine again'],
                                       cinder_exc.Forbidden(403), ['later']]
    refusals = cinder.Refusals()
    assert cinder.Volumes(client, 1, refusals=refusals).list_all() == ['mine']
    # another Volumes of the same store shares what Cinder refused
    assert cinder.Volumes(client, 1, refusals=refusals).list_all() == [
        'mine again']
    now[0] += cinder.Refusals.FORGET_AFTER
    assert cinder.Volumes(client, 1, refusals=refusals).list_all() == [
        'later']
    assert client.volumes.list.call_args_list == [
        mock.call(search_opts={'all_tenants': 1}),
        mock.call(search_opts=None),
        mock.call(search_opts=None),
        mock.call(search_opts={'all_tenants': 1}),
        mock.call(search_opts=None)]


def test_what_cinder_refused_one_store_does_not_hold_for_another():
    client = mock.Mock()
    client.volumes.list.side_effect = [
        cinder_exc.BadRequest(400, 'filters'), ['all'],
        [mock.Mock(id='b')]]
    assert cinder.Volumes(client, 1).list_all(metadata={'k': 'v'}) == ['all']
    assert cinder.Volumes(client, 1).release_requested(
        ['a', 'b'], each=False) == ['b']
    assert client.volumes.list.call_args_list[-1] == mock.call(search_opts={
        'metadata': {cinder.RELEASE_MARK: 'wanted'}, 'all_tenants': 1})


def test_list_all_lists_everything_when_cinder_refuses_the_filter():
    client = mock.Mock()
    refused = cinder_exc.BadRequest(
        400, 'Invalid filters metadata are found in query options.')
    client.volumes.list.side_effect = [refused, ['all'], ['all again']]
    volumes = cinder.Volumes(client, 1)
    assert volumes.list_all(metadata={'k': 'v'}) == ['all']
    assert volumes.list_all(metadata={'k': 'v'}) == ['all again']
    assert client.volumes.list.call_args_list == [
        mock.call(search_opts={'metadata': {'k': 'v'}, 'all_tenants': 1}),
        mock.call(search_opts={'all_tenants': 1}),
        mock.call(search_opts={'all_tenants': 1})]      # not asked again


def test_list_all_passes_a_metadata_filter_to_cinder():
    client = mock.Mock()
    client.volumes.list.side_effect = [cinder_exc.Forbidden(403), ['mine']]
    assert cinder.Volumes(client, 1).list_all(metadata={'k': 'v'}) == [
        'mine']
    assert client.volumes.list.call_args_list == [
        mock.call(search_opts={'metadata': {'k': 'v'}, 'all_tenants': 1}),
        mock.call(search_opts={'metadata': {'k': 'v'}})]


def test_list_all_other_errors_are_translated():
    client = mock.Mock()
    client.volumes.list.side_effect = ks_exc.ConnectFailure('refused')
    with pytest.raises(exceptions.BackendException, match='cannot reach'):
        cinder.Volumes(client, 1).list_all()


def test_volume_type_lookups_are_translated():
    client = mock.Mock()
    client.volume_types.find.side_effect = cinder_exc.NotFound(404)
    client.volume_types.default.side_effect = cinder_exc.ClientException(500)
    vols = cinder.Volumes(client, 1)
    with pytest.raises(exceptions.NotFound, match='volume type gold'):
        vols.volume_type('gold')
    with pytest.raises(exceptions.BackendException, match='default'):
        vols.default_volume_type()


def test_creates_are_not_retried_on_5xx_by_the_http_layer(conf, version):
    client = cinder.CinderClientFactory(conf).client(idempotent=False)
    assert client.client.status_code_retries == 0
    assert client.client.connect_retries == 0


class Found:
    def __init__(self, vid, metadata=None, status='reserved', mode='rw'):
        self.id = vid
        self.metadata = metadata or {}
        self.status = status
        self.attach_mode = mode
        self.instance = None


@pytest.fixture
def no_sleep(monkeypatch):
    monkeypatch.setattr(cinder.time, 'sleep', lambda s: None)


def test_volume_create_that_took_effect_is_not_repeated(no_sleep):
    client = mock.Mock()
    meta = {'glance_cinder_store_upload': 'mark-1'}
    client.volumes.create.side_effect = cinder_exc.ClientException(503)
    client.volumes.list.return_value = [Found('other', {}),
                                        Found('ours', dict(meta))]
    vol = cinder.Volumes(client, 1).create(1, 'image-x', meta, 'gold')
    assert vol.id == 'ours' and client.volumes.create.call_count == 1


def test_volume_create_that_did_not_take_effect_is_retried(no_sleep):
    client = mock.Mock()
    client.volumes.create.side_effect = [cinder_exc.ClientException(500),
                                         Found('new')]
    client.volumes.list.return_value = []
    vol = cinder.Volumes(client, 1).create(1, 'image-x', {'k': 'v'}, 'gold')
    assert vol.id == 'new' and client.volumes.create.call_count == 2


def test_volume_create_refused_is_not_retried(no_sleep):
    client = mock.Mock()
    client.volumes.create.side_effect = cinder_exc.OverLimit(413)
    with pytest.raises(exceptions.StorageFull):
        cinder.Volumes(client, 1).create(1, 'image-x', {}, 'gold')
    assert client.volumes.create.call_count == 1
    assert not client.volumes.list.called


def test_attachment_create_lookup_after_a_lost_answer(no_sleep):
    client = mock.Mock()
    client.attachments.create.side_effect = ks_exc.ConnectFailure('reset')
    client.attachments.list.return_value = [Found('a9', status='attached'),
                                            Found('a7')]
    assert cinder.Volumes(client, 1).attachment_create('v', 'rw') == {
        'id': 'a7', 'connection_info': None}
    assert client.attachments.create.call_count == 1


def test_attachment_found_after_a_lost_answer_keeps_its_connection(
        no_sleep):
    # connected by the lost call already: connecting it again could make
    # the backend export the volume twice
    client = mock.Mock()
    client.attachments.create.side_effect = ks_exc.ConnectFailure('reset')
    found = Found('a7', status='attaching')
    found.connection_info = {'device_path': '/dev/loop3'}
    client.attachments.list.return_value = [found]
    got = cinder.Volumes(client, 1).attachment_create('v', 'rw', {'h': 1})
    assert got == {'id': 'a7',
                   'connection_info': {'device_path': '/dev/loop3'}}


def test_attachment_create_passes_the_connector():
    client = mock.Mock()
    client.attachments.create.return_value = {'id': 'a1',
                                              'connection_info': {'x': 1}}
    got = cinder.Volumes(client, 1).attachment_create('v', 'ro',
                                                      {'host': 'h'})
    assert got['connection_info'] == {'x': 1}
    client.attachments.create.assert_called_once_with('v', {'host': 'h'},
                                                      mode='ro')


def test_busy_elsewhere_asks_other_hosts_to_let_go():
    client = mock.Mock()
    in_use = cinder_exc.BadRequest(
        400, 'Invalid volume: Volume v status must be available or '
        'downloading to reserve, but the current status is in-use.')
    client.attachments.create.side_effect = [in_use, in_use, {'id': 'a1'}]
    cinder.Volumes(client, 1).attachment_create('v', 'ro')
    client.volumes.set_metadata.assert_called_once_with(
        'v', {cinder.RELEASE_MARK: 'wanted'})


def test_release_requested_by_mark_or_gone():
    client = mock.Mock()
    marked = mock.Mock(metadata={cinder.RELEASE_MARK: 'wanted'})
    plain = mock.Mock(metadata={})
    client.volumes.get.side_effect = [marked, plain,
                                      cinder_exc.NotFound(404)]
    assert cinder.Volumes(client, 1).release_requested(
        ['a', 'b', 'c']) == ['a', 'c']


def test_release_requested_of_several_is_one_filtered_query():
    client = mock.Mock()
    client.volumes.list.return_value = [mock.Mock(id='b'),
                                        mock.Mock(id='elsewhere')]
    assert cinder.Volumes(client, 1).release_requested(
        ['a', 'b', 'c'], each=False) == ['b']
    client.volumes.list.assert_called_once_with(search_opts={
        'metadata': {cinder.RELEASE_MARK: 'wanted'}, 'all_tenants': 1})
    client.volumes.get.assert_not_called()


def test_release_requested_looks_at_each_when_cinder_will_not_filter():
    client = mock.Mock()
    client.volumes.list.side_effect = cinder_exc.BadRequest(400, 'filters')
    client.volumes.get.side_effect = [
        mock.Mock(metadata={}), mock.Mock(metadata={cinder.RELEASE_MARK: 'x'})]
    volumes = cinder.Volumes(client, 1)
    assert volumes.release_requested(['a', 'b'], each=False) == ['b']
    # never a listing of every volume, and not asked again
    client.volumes.list.assert_called_once()
    client.volumes.get.side_effect = [mock.Mock(metadata={})] * 2
    assert volumes.release_requested(['a', 'b'], each=False) == []
    client.volumes.list.assert_called_once()


def test_polls_fast_for_the_first_second():
    states = [mock.Mock(attempt_number=n) for n in (1, 10, 20, 21, 40)]
    waits = [cinder._poll_wait(s) for s in states]
    assert waits[:3] == [0.05, 0.05, 0.05]
    assert 0.05 < waits[3] < waits[4] == 2.0


def test_attachment_create_names_multiattach_when_in_use_elsewhere():
    client = mock.Mock()
    client.attachments.create.side_effect = cinder_exc.BadRequest(
        400, 'Invalid volume: Volume v status must be available or '
        'downloading to reserve, but the current status is in-use.')
    volumes = cinder.Volumes(client, 1, attach_retries=1)
    with mock.patch('time.sleep'):
        with pytest.raises(cinder.VolumeBusyElsewhere,
                           match='not multiattach.*2 attempts'):
            volumes.attachment_create('v', 'ro')

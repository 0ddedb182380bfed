"""Talking to Cinder: credentials, endpoint, microversion, the calls we make.

Nothing else in the package imports cinderclient.  Every cinderclient or
keystoneauth error leaves this module as a glance_store exception with a
message an operator can act on.
"""

import collections
from concurrent import futures
import contextlib
import functools
import hashlib
import logging
import threading
import time

from cinderclient import api_versions
from cinderclient import exceptions as cinder_exc
from cinderclient.v3 import client as cinder_client
from glance_store import exceptions
from keystoneauth1.access import service_catalog
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import identity
from keystoneauth1 import session as ks_session
from keystoneauth1 import token_endpoint
import tenacity

LOG = logging.getLogger(__name__)

# 3.54: attachments with an attach mode, plus attachment complete (3.44).
REQUIRED_VERSION = api_versions.APIVersion('3.54')
# 3.42: extending an in-use (attached) volume.
ONLINE_EXTEND_VERSION = api_versions.APIVersion('3.42')
RETRIABLE_STATUS = [502, 503, 504]
#: Volume metadata key: a host asks the others to let go of their idle
#: (warm) attachments of this volume (see warm.py).
RELEASE_MARK = 'glance_cinder_store_release'


def in_background(call, *args):
    """Make a Cinder call in a thread; the returned future re-raises its error.

    For calls whose answer the caller needs later, not before its next
    step (an upload's final metadata beside its detach, an attachment's
    "complete" beside the first read).
    """
    future = futures.Future()

    def run():
        try:
            future.set_result(call(*args))
        except BaseException as e:
            future.set_exception(e)
    threading.Thread(target=run, name='gcs-cinder-call', daemon=True).start()
    return future


@contextlib.contextmanager
def translated_errors(what):
    """Re-raise Cinder/keystone failures of ``what`` as glance_store errors."""
    try:
        yield
    except exceptions.GlanceStoreException:
        raise
    except cinder_exc.NotFound as e:
        raise exceptions.NotFound('%s: not found in Cinder (%s)' % (what, e))
    except cinder_exc.OverLimit as e:
        raise exceptions.StorageFull('%s: Cinder quota exceeded (%s)'
                                     % (what, e))
    except cinder_exc.Forbidden as e:
        raise exceptions.Forbidden('%s: forbidden by Cinder (%s)' % (what, e))
    except cinder_exc.ClientException as e:
        raise exceptions.BackendException('%s failed: Cinder answered: %s'
                                          % (what, e))
    except ks_exc.ClientException as e:
        raise exceptions.BackendException(
            '%s failed: cannot reach Cinder or Keystone (%s)' % (what, e))


class VolumeBusyElsewhere(exceptions.RemoteServiceUnavailable):
    """Held by another host and not multiattach: try again later."""


class VolumeFailed(exceptions.BackendException):
    """A volume went to an error state, or never reached the one awaited."""


class CinderClientFactory:
    """Builds cinderclient clients for one store.

    With ``cinder_store_*`` service credentials (password or application
    credential) every call runs in that service project; without them the
    request's token and project are used.  The keystone session is the
    store's own (never shared with the built-in driver's module-level one)
    and is created once.
    """

    def __init__(self, conf):
        self.conf = conf
        self._session = None
        self._server_version = None
        self._lock = threading.Lock()

    @property
    def service_key(self):
        """Names the service credentials and their Cinder; None without.

        No secret goes into it.
        """
        if not self.uses_service_credentials:
            return None
        c = self.conf
        who = (c.cinder_store_auth_address,
               c.cinder_store_application_credential_id,
               c.cinder_store_user_name, c.cinder_store_user_domain_name,
               c.cinder_store_project_name, c.cinder_store_project_domain_name,
               c.cinder_os_region_name, c.cinder_catalog_info,
               c.cinder_endpoint_template)
        return hashlib.sha256(repr(who).encode()).hexdigest()[:16]

    @property
    def uses_service_credentials(self):
        c = self.conf
        if c.cinder_store_application_credential_id:
            return bool(c.cinder_store_application_credential_secret and
                        c.cinder_store_auth_address)
        return bool(c.cinder_store_user_name and c.cinder_store_password and
                    c.cinder_store_project_name and
                    c.cinder_store_auth_address)

    def _verify(self):
        if self.conf.cinder_api_insecure:
            return False
        return self.conf.cinder_ca_certificates_file or True

    def _service_auth(self):
        c = self.conf
        if c.cinder_store_application_credential_id:
            return identity.V3ApplicationCredential(
                auth_url=c.cinder_store_auth_address,
                application_credential_id=(
                    c.cinder_store_application_credential_id),
                application_credential_secret=(
                    c.cinder_store_application_credential_secret))
        return identity.V3Password(
            auth_url=c.cinder_store_auth_address,
            username=c.cinder_store_user_name,
            password=c.cinder_store_password,
            user_domain_name=c.cinder_store_user_domain_name,
            project_name=c.cinder_store_project_name,
            project_domain_name=c.cinder_store_project_domain_name)

    def session(self):
        with self._lock:
            if self._session is None:
                auth = (self._service_auth()
                        if self.uses_service_credentials else None)
                self._session = ks_session.Session(
                    auth=auth, verify=self._verify(),
                    timeout=self.conf.cinder_plus_http_timeout or None)
            return self._session

    def _user_auth(self, context):
        """Token auth for the request's user against the catalog endpoint."""
        if context is None:
            raise exceptions.BadStoreConfiguration(
                store_name='cinder_plus',
                reason='no cinder_store_* service credentials are configured '
                       'and the request carries no user context')
        if self.conf.cinder_endpoint_template:
            url = self.conf.cinder_endpoint_template % context.to_dict()
        else:
            stype, sname, interface = self.conf.cinder_catalog_info.split(':')
            try:
                url = service_catalog.ServiceCatalogV2(
                    context.service_catalog).url_for(
                        service_type=stype, service_name=sname or None,
                        interface=interface,
                        region_name=self.conf.cinder_os_region_name)
            except ks_exc.EndpointNotFound:
                raise exceptions.BadStoreConfiguration(
                    store_name='cinder_plus',
                    reason='no %r endpoint in the request\'s service catalog '
                           '(cinder_catalog_info)'
                           % self.conf.cinder_catalog_info)
        return token_endpoint.Token(endpoint=url, token=context.auth_token)

    def client(self, context=None, version=REQUIRED_VERSION,
               idempotent=True):
        """A cinderclient client for the store's credentials or ``context``.

        ``idempotent=False``: for calls that must not be repeated blindly
        (creates), neither 5xx answers nor lost connections are retried.
        """
        auth = None if self.uses_service_credentials else self._user_auth(
            context)
        retries = self.conf.cinder_http_retries
        kwargs = {}
        template = self.conf.cinder_endpoint_template
        if self.uses_service_credentials and template:
            kwargs['os_endpoint'] = template % (
                context.to_dict() if context else {})
        elif self.uses_service_credentials:
            stype, sname, interface = self.conf.cinder_catalog_info.split(':')
            kwargs.update(service_type=stype, service_name=sname or None,
                          endpoint_type=interface)
        client = cinder_client.Client(
            session=self.session(), auth=auth,
            region_name=self.conf.cinder_os_region_name,
            api_version=version, retries=retries,
            # a reset connection may have carried the request: for creates
            # only a lookup may decide to send it again
            connect_retries=retries if idempotent else 0,
            status_code_retries=retries if idempotent else 0,
            retriable_status_codes=RETRIABLE_STATUS, **kwargs)
        self._check_server_version(client)
        return client

    def _check_server_version(self, client):
        if self._server_version is not None:
            return
        with translated_errors('asking Cinder for its API versions'):
            highest = api_versions.get_highest_version(client)
        if highest < REQUIRED_VERSION:
            raise exceptions.BackendException(
                'Cinder API at most %s is too old: this store needs '
                'microversion %s (attachments with an attach mode)'
                % (highest.get_string(), REQUIRED_VERSION.get_string()))
        self._server_version = highest

    @property
    def server_version(self):
        """Cinder's highest microversion, once a client has asked for it."""
        return self._server_version

    @property
    def online_extend_supported(self):
        return (self._server_version is not None and
                self._server_version >= ONLINE_EXTEND_VERSION)


def _is_transitional(volume, transitional):
    return volume.status in transitional


#: seconds between two looks at a volume in its first second of waiting
POLL = 0.05


def _poll_wait(retry_state):
    """Every 50 ms for a second, then backing off by 1.6x up to 2 s.

    Volumes are often ready in 0.2-0.5 s: polling fast at first saves up
    to 0.2 s per image over a back-off from the start.
    """
    late = retry_state.attempt_number - 20
    return POLL if late <= 0 else min(2.0, POLL * 1.6 ** late)


class Refusals:
    """What Cinder refused a set of credentials, remembered for a while.

    A service user without admin rights gets a 403 for a listing of all
    projects; a Cinder whose ``resource_filters.json`` lacks the metadata
    filter answers 400.  The warm cache and the self-healing pass ask every
    few seconds: asking again each time doubles the calls and fills
    cinder-api's log with refusals.  A refusal is asked about again after
    ``FORGET_AFTER`` seconds, so a policy change takes effect without a
    restart.
    """

    FORGET_AFTER = 3600.0
    ALL_PROJECTS = 'listing all projects'
    METADATA_FILTER = 'filtering by metadata'

    def __init__(self):
        self._lock = threading.Lock()
        self._when = {}

    def note(self, what):
        with self._lock:
            self._when[what] = time.monotonic()

    def __contains__(self, what):
        with self._lock:
            when = self._when.get(what)
            if when is None:
                return False
            if time.monotonic() - when < self.FORGET_AFTER:
                return True
            del self._when[what]
            return False


class Settling:
    """How long a store's volumes took to leave a transitional status.

    A wait starts polling after most of the usual time: on a busy Cinder a
    create takes a second or more, and polling every 50 ms from the start
    spent ~5 GETs per image (cinder-api CPU that concurrent uploads needed
    on a small host).  Each store keeps its own: backends differ.
    """

    SAMPLES = 8
    #: of the median: a volume faster than usual is seen within a poll or two
    SHARE = 0.75
    MAX_FIRST = 2.0

    def __init__(self):
        self._lock = threading.Lock()
        self._seen = {}

    def first_wait(self, status):
        """Seconds before the first look at a volume now in ``status``."""
        with self._lock:
            seen = sorted(self._seen.get(status, ()))
        if not seen:
            return POLL
        usual = seen[len(seen) // 2]
        return min(self.MAX_FIRST, max(POLL, self.SHARE * usual))

    def record(self, status, seconds):
        with self._lock:
            seen = self._seen.setdefault(
                status, collections.deque(maxlen=self.SAMPLES))
            seen.append(seconds)


def _sleep(seconds):
    time.sleep(seconds)     # looked up at each call: tests patch time.sleep


def _volume_busy(error):
    """Cinder's 400 for a volume between states (another attach racing)."""
    return (isinstance(error, cinder_exc.BadRequest) and
            'to reserve' in str(error) and 'current status is' in str(error))


def _uncertain(error):
    """An answer that does not say whether a create took effect."""
    if isinstance(error, cinder_exc.ClientException):
        return getattr(error, 'code', 0) in RETRIABLE_STATUS + [500]
    return isinstance(error, (ks_exc.ConnectionError,
                              ks_exc.RetriableConnectionFailure))


class Volumes:
    """The volume and attachment calls the store makes, with one client.

    ``once`` is a client that does not retry 5xx answers, for the calls
    that are not idempotent (volume and attachment create): those are
    retried only after a lookup shows that the first call did not take
    effect.
    """

    #: attempts of a non-idempotent create whose answer was uncertain
    CREATE_ATTEMPTS = 3

    def __init__(self, client, timeout, attach_retries=5, once=None,
                 busy_min_wait=0.0, settling=None, service_key=None,
                 refusals=None):
        self.client = client
        #: made with the store's own credentials, named by this key (see
        #: ``CinderClientFactory.service_key``): processes of a host whose
        #: keys are equal get the same answers
        self.service_key = service_key
        self.settling = settling or Settling()
        self.refusals = Refusals() if refusals is None else refusals
        self.once = once or client
        self.timeout = timeout
        self.attach_retries = attach_retries
        # A host keeping the volume warm lets go only at its next check for
        # release requests: retrying for less than that gives up on a
        # volume that was about to be free.
        self.busy_min_wait = busy_min_wait

    @property
    def as_service(self):
        """Any two such instances of a store may ask for each other."""
        return self.service_key is not None

    def _create_once(self, create, lookup):
        """``create()``; after an uncertain failure, ``lookup()`` decides.

        The lookup returns what the failed call created (then that is the
        result) or None (then the create is tried again, a bounded number
        of times).
        """
        for attempt in range(1, self.CREATE_ATTEMPTS + 1):
            try:
                return create()
            except (cinder_exc.ClientException, ks_exc.ClientException) as e:
                if not _uncertain(e) or attempt == self.CREATE_ATTEMPTS:
                    raise
                LOG.warning('uncertain answer from Cinder (%s): looking up '
                            'whether the call took effect', e)
                time.sleep(0.5 * attempt)
                found = lookup()
                if found is not None:
                    return found

    def get(self, volume_id):
        with translated_errors('volume %s' % volume_id):
            return self.client.volumes.get(volume_id)

    def list_all(self, metadata=None):
        """Every volume these credentials see: all projects' if allowed.

        ``metadata``: only volumes with these metadata values (Cinder
        filters them, a query instead of a listing of the whole cloud).
        A Cinder whose ``resource_filters.json`` does not enable the
        metadata filter for this user refuses it (400): then every volume
        is listed, and the caller judges each.
        """
        found = self._with_metadata(metadata) if metadata else None
        return self._list_all({}) if found is None else found

    def _with_metadata(self, metadata):
        """Volumes with these metadata values; None if Cinder won't filter."""
        if Refusals.METADATA_FILTER in self.refusals:
            return None
        try:
            return self._list_all({'metadata': metadata})
        except exceptions.BackendException as e:
            if not isinstance(e.__context__, cinder_exc.BadRequest):
                raise
            LOG.warning('Cinder refuses to filter volumes by metadata (%s): '
                        'listing every volume or looking at each instead for '
                        'an hour (enable "metadata" for volumes in Cinder\'s '
                        'resource_filters.json)', e)
            self.refusals.note(Refusals.METADATA_FILTER)
            return None

    def _list_all(self, only):
        if Refusals.ALL_PROJECTS not in self.refusals:
            try:
                with translated_errors('listing the volumes of all projects'):
                    return self.client.volumes.list(
                        search_opts=dict(only, all_tenants=1))
            except exceptions.Forbidden:
                LOG.info('not allowed to list all projects\' volumes: '
                         'listing this project\'s only for an hour')
                self.refusals.note(Refusals.ALL_PROJECTS)
        with translated_errors('listing volumes'):
            return self.client.volumes.list(search_opts=only or None)

    def volume_type(self, name):
        """The volume type called ``name``; NotFound if Cinder has none."""
        with translated_errors('volume type %s' % name):
            return self.client.volume_types.find(name=name)

    def default_volume_type(self):
        with translated_errors('Cinder\'s default volume type'):
            return self.client.volume_types.default()

    def create(self, size_gb, name, metadata, volume_type):
        def create():
            return self.once.volumes.create(
                size_gb, name=name, metadata=metadata,
                volume_type=volume_type)

        def lookup():
            # ours: the same name and the same metadata (the upload mark
            # names this process and this moment)
            for vol in self.client.volumes.list(search_opts={'name': name}):
                if all((vol.metadata or {}).get(k) == v
                       for k, v in metadata.items()):
                    return vol
            return None

        with translated_errors('creating volume %s' % name):
            return self._create_once(create, lookup)

    def wait_for(self, volume, wanted, transitional, timeout=None):
        """Poll ``volume`` until its status is ``wanted``; fail fast on error.

        A volume passed in a transitional status is first looked at after
        most of the time such waits took (``Settling``), then every 50 ms
        for a second (volumes are often ready in a second), then backing
        off, bounded by ``cinder_state_transition_timeout``.
        """
        timeout = self.timeout if timeout is None else timeout
        start = time.monotonic()
        settling = volume.status if volume.status in transitional else None
        if settling:    # no GET yet: it cannot have changed already
            _sleep(self.settling.first_wait(settling))
        retry = tenacity.Retrying(
            sleep=_sleep,
            retry=tenacity.retry_if_result(functools.partial(
                _is_transitional, transitional=transitional)),
            wait=_poll_wait,
            stop=tenacity.stop_after_delay(timeout),
            retry_error_callback=lambda state: state.outcome.result(),
            reraise=True)
        volume = retry(self.get, volume.id)
        if settling and volume.status == wanted:
            self.settling.record(settling, time.monotonic() - start)
        if volume.status != wanted:
            raise VolumeFailed(
                'volume %s is %s, expected %s%s' % (
                    volume.id, volume.status, wanted,
                    ' (timed out after %ss)' % timeout
                    if volume.status in transitional else ''))
        return volume

    def extend(self, volume, new_size_gb):
        with translated_errors('extending volume %s' % volume.id):
            self.client.volumes.extend(volume, new_size_gb)

    def delete(self, volume_id):
        """Delete a volume; an uncertain answer is checked, not trusted."""
        try:
            with translated_errors('deleting volume %s' % volume_id):
                self.client.volumes.delete(volume_id)
        except exceptions.BackendException:
            try:
                status = self.get(volume_id).status
            except exceptions.NotFound:
                return
            except Exception:
                status = None
            if status not in ('deleting', 'deleted'):
                raise

    def rename(self, volume, name, metadata):
        """Rename ``volume`` and replace its metadata: one round trip.

        Cinder's volume update replaces the whole metadata when it is
        given.  Returns the volume as Cinder has it now.
        """
        manager = self.client.volumes
        with translated_errors('renaming volume %s' % volume.id):
            body = manager.update(volume, name=name, metadata=metadata)
        return manager.resource_class(manager, body['volume'], loaded=True)

    def replace_metadata(self, volume, metadata):
        with translated_errors('updating metadata of volume %s' % volume.id):
            self.client.volumes.update_all_metadata(volume, metadata)

    def set_metadata(self, volume, metadata):
        """Add or change some keys, leaving the others as they are."""
        with translated_errors('updating metadata of volume %s' % volume.id):
            self.client.volumes.set_metadata(volume, metadata)

    def set_readonly(self, volume):
        with translated_errors('marking volume %s read-only' % volume.id):
            self.client.volumes.update_readonly_flag(volume, True)

    def attachment_create(self, volume_id, mode, connector=None):
        """Reserve the volume; retried while another attach is under way.

        With ``connector``, Cinder also connects it (what attachment_update
        would do) and the answer carries the ``connection_info``: one round
        trip instead of two.  While the volume is in use elsewhere and
        cannot be attached twice, ask the other hosts to let go of their
        idle attachments.
        """
        asked = []

        def create_now():
            try:
                return self.once.attachments.create(volume_id, connector,
                                                    mode=mode)
            except cinder_exc.BadRequest as e:
                if _volume_busy(e) and 'in-use' in str(e) and not asked:
                    asked.append(self.request_release(volume_id))
                raise
        retry = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_volume_busy),
            wait=tenacity.wait_exponential(multiplier=0.2, max=4),
            stop=(tenacity.stop_after_attempt(self.attach_retries + 1) &
                  tenacity.stop_after_delay(self.busy_min_wait)),
            reraise=True)

        def create():
            return retry(create_now)

        # with a connector, Cinder has already moved it on to 'attaching'
        statuses = ('reserved',) if connector is None else ('reserved',
                                                            'attaching')

        def lookup():
            # Callers hold the volume's lock on this host: an uncompleted
            # attachment in our mode, for no instance, is the one we made.
            found = [a for a in self.client.attachments.list(
                search_opts={'volume_id': volume_id}, detailed=True)
                if a.status in statuses and
                getattr(a, 'attach_mode', mode) == mode and
                not getattr(a, 'instance', None)]
            if len(found) != 1:
                return None
            # with its connection: connecting it a second time (attachment
            # update) could make the backend export it twice
            return {'id': found[0].id,
                    'connection_info': getattr(found[0], 'connection_info',
                                               None)}

        try:
            with translated_errors('reserving volume %s' % volume_id):
                return self._create_once(create, lookup)
        except exceptions.BackendException as e:
            if 'current status is in-use' not in str(e):
                raise
            # Attached elsewhere (another glance-api host, or nova) and
            # the volume type does not allow a second attachment: busy, not
            # broken (Glance answers a download with 503).
            raise VolumeBusyElsewhere(message=(
                'volume %s is attached elsewhere and its volume type is not '
                'multiattach; still in use after %d attempts. Readers on '
                'several hosts need multiattach="<is> True" on the store\'s '
                'volume type (%s)' % (volume_id, self.attach_retries + 1, e)))

    def request_release(self, volume_id):
        """Ask other hosts to let go of their idle attachments of a volume.

        Best effort: True when the mark was set.
        """
        try:
            with translated_errors('marking volume %s' % volume_id):
                self.client.volumes.set_metadata(volume_id,
                                                 {RELEASE_MARK: 'wanted'})
            return True
        except exceptions.GlanceStoreException as e:
            LOG.warning('could not ask other hosts to release volume %s: %s',
                        volume_id, e)
            return False

    def marked_for_release(self):
        """Ids of the volumes carrying the release mark, in one query.

        None when Cinder will not filter by metadata.
        """
        marked = self._with_metadata({RELEASE_MARK: 'wanted'})
        return None if marked is None else {volume.id for volume in marked}

    def release_requested(self, volume_ids, each=True):
        """Those of ``volume_ids`` another host wants (or that are gone).

        ``each`` False: one query for the volumes carrying the release
        mark instead of a GET per volume.  That query cannot tell that a
        volume is gone (force-deleted while we held it), so a caller that
        asks often still asks with ``each`` now and then.
        """
        if not each and len(volume_ids) > 1:
            marked = self.marked_for_release()
            if marked is not None:
                return [v for v in volume_ids if v in marked]
        wanted = []
        for volume_id in volume_ids:
            try:
                volume = self.get(volume_id)
            except exceptions.NotFound:
                wanted.append(volume_id)
                continue
            if RELEASE_MARK in (volume.metadata or {}):
                wanted.append(volume_id)
        return wanted

    def attachment_update(self, attachment_id, connector):
        with translated_errors('attachment %s' % attachment_id):
            return self.client.attachments.update(attachment_id, connector)

    def attachment_show(self, attachment_id):
        with translated_errors('attachment %s' % attachment_id):
            return self.client.attachments.show(attachment_id)

    def attachment_complete(self, attachment_id):
        with translated_errors('completing attachment %s' % attachment_id):
            self.client.attachments.complete(attachment_id)

    def attachment_delete(self, attachment_id):
        """Delete an attachment; one already gone counts as deleted."""
        try:
            with translated_errors('deleting attachment %s' % attachment_id):
                self.client.attachments.delete(attachment_id)
        except exceptions.NotFound:
            LOG.debug('attachment %s was already gone', attachment_id)

    def volume_attachments(self, volume_id):
        """Every attachment of a volume, also those not yet attached.

        The volume's own view lists only completed (``attached``) ones: an
        attachment left ``reserved`` or ``attaching`` by a process killed
        mid-attach shows up only here, and keeps the volume from being
        deleted.
        """
        with translated_errors('listing the attachments of volume %s'
                               % volume_id):
            return self.client.attachments.list(
                search_opts={'volume_id': volume_id}, detailed=True)

    def host_attachments(self, volume_id, host):
        """Attachment ids of ``volume_id`` held by ``host``, per Cinder."""
        volume = self.get(volume_id)
        return [a['attachment_id'] for a in volume.attachments
                if a.get('host_name') == host]

"""The test cloud as clients expect it (tools/aio)."""

import uuid

from cinderclient import client as cinder_client

from tests.functional import conftest as fx


def test_cinder_is_in_the_catalog_under_both_service_types(admin):
    """``block-storage`` (official; SDKs, test suites) and ``volumev3``."""
    catalog = admin.auth.get_access(admin).service_catalog
    for stype in ('block-storage', 'volumev3'):
        url = catalog.url_for(service_type=stype, interface='public')
        assert ':8776/v3/' in url, (stype, url)


def test_non_admin_volume_listing_honours_name_filter(volumes):
    """Cinder's resource_filters.json is installed: members may filter."""
    demo = cinder_client.Client('3.70', session=fx.session_for('demo'))
    tag = uuid.uuid4().hex[:8]
    wanted = volumes(demo, size=1, name='gcs-func-filter-%s-a' % tag)
    other = volumes(demo, size=1, name='gcs-func-filter-%s-b' % tag)
    for vol in (wanted, other):     # (a volume being created: no delete)
        fx.wait_volume(demo, vol.id)
    found = demo.volumes.list(search_opts={'name': wanted.name})
    assert [v.id for v in found] == [wanted.id]

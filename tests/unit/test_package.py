"""How the package is laid out for installers and glance-api."""

import importlib.metadata

import glance_cinder_store


def test_is_a_regular_package():
    # an implicit namespace package has no __file__ and merges every
    # directory of that name on sys.path into one
    assert glance_cinder_store.__file__ is not None
    assert len(list(glance_cinder_store.__path__)) == 1


def test_glance_finds_the_driver_by_its_entry_point():
    found = importlib.metadata.entry_points(group='glance_store.drivers')
    (driver,) = [e for e in found if e.name == 'cinder_plus']
    assert driver.value == 'glance_cinder_store.store:CinderStore'
    assert driver.load().__name__ == 'CinderStore'

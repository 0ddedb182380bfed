"""The benchmark's concurrent-upload CPU figures (tools/bench_lib)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..',
                                'tools'))

from bench_lib import report  # noqa: E402


def each(glance, cinder, db_queue):
    return {'glance': glance, 'cinder': cinder, 'db_queue': db_queue}


def test_cpu_cost_ratios_divide_the_file_stores_cpu_by_ours():
    costs = report.cpu_cost_ratios({'gold': each(0.2, 0.35, 0.05),
                                    'files': each(0.18, 0.01, 0.01)})
    assert costs['all_in_one'] == pytest.approx(0.2 / 0.6)
    assert costs['cinder_elsewhere'] == pytest.approx(0.2 / 0.2)
    assert costs['cinder_alone'] == pytest.approx(0.2 / 0.4)


def test_cpu_cost_ratios_are_unknown_without_every_figure():
    costs = report.cpu_cost_ratios({'gold': each(0.2, None, 0.05),
                                    'files': each(0.18, 0.01, 0.01)})
    assert costs == dict.fromkeys(('all_in_one', 'cinder_elsewhere',
                                   'cinder_alone'))


def test_cpu_bound_assumes_every_cpu_busy():
    # 8 uploads of 0.5 CPU s on 2 CPUs need 2 s; the file store took 1 s
    assert report.cpu_bound(each(0.2, 0.25, 0.05), 8, 1.0, 2) == (
        pytest.approx(0.5))
    assert report.cpu_bound(each(0.2, 0.25, 0.05), 8, None, 2) is None

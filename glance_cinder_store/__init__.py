"""Cinder block storage as a glance_store driver (``cinder_plus``).

A regular package, not an implicit namespace one: every module then comes
from one installed copy, and a stray checkout on ``sys.path`` cannot lend
it modules the installed copy lacks.
"""

# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

"""Sphinx configuration of the glance-cinder-store documentation."""

# -- General ----------------------------------------------------------------

extensions = [
    'openstackdocstheme',
    # .. show-options:: renders the options from their definitions.
    'oslo_config.sphinxext',
    # Writes _static/glance-cinder-store.conf.sample at build time from
    # etc/oslo-config-generator/glance-cinder-store.conf.
    'oslo_config.sphinxconfiggen',
]

config_generator_config_file = (
    '../../etc/oslo-config-generator/glance-cinder-store.conf')
sample_config_basename = '_static/glance-cinder-store'

openstackdocs_repo_name = 'openstack/glance-cinder-store'
openstackdocs_bug_project = 'glance-cinder-store'
openstackdocs_bug_tag = 'doc'
openstackdocs_auto_name = False

project = 'glance-cinder-store'
copyright = 'glance-cinder-store developers'

source_suffix = '.rst'
master_doc = 'index'
exclude_patterns = []
add_module_names = True
pygments_style = 'native'

# -- HTML -------------------------------------------------------------------

html_theme = 'openstackdocs'
html_static_path = ['_static']
htmlhelp_basename = 'glance-cinder-storedoc'

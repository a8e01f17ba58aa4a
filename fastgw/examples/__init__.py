"""Example plugins, shipped with fastgw: docs/plugins.md teaches with them, ``fastgw demo``
loads them (``[plugins].paths`` names this folder; a file starting with "_" is no plugin).

May import: fastgw.plugin.
"""

"""Hydra finds this module by itself (the `hydra_plugins` namespace) before it composes any config of this
project: it registers each method's defaults (`method_defaults/<name>`, gad.config.registry) and adds each
GAD_PLUGINS folder's conf/ to the search path, so `method=<name>` finds a plugin's conf/method/<name>.yaml."""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

from gad.config.registry import PROJECT_CONF, conf_dirs, register_defaults


class GADPlugins(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        register_defaults()
        for conf in conf_dirs():
            if conf != PROJECT_CONF:
                search_path.append(provider="gad-plugins", path=f"file://{conf}")

"""errands as a service: the systemd unit of ``errands up`` (:mod:`.unit`) and installing,
looking at and removing it (:mod:`.systemd`). ``errands service install|status|uninstall``."""

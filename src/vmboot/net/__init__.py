"""Host-side network backends for virtio-net: an existing TAP interface (:mod:`.tap`) or
user-mode networking through ``passt`` (:mod:`.passt`), chosen by a :class:`.config.NetConfig`."""

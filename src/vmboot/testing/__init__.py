"""Tests in guests: the parts of vmboot's pytest plugin (:mod:`vmboot.pytest_plugin`).

- :mod:`~vmboot.testing.names`: the plugin's names and defaults (imported when pytest loads it);
- :mod:`~vmboot.testing.guest_spec`: which guest a test gets (``@pytest.mark.vmboot(...)``,
  the ``--vmboot-*`` options), and the key its snapshot is cached under;
- :mod:`~vmboot.testing.agent_image`: the guest's initramfs (busybox, the agent as init);
- :mod:`~vmboot.testing.guest_vm`: :class:`~vmboot.testing.guest_vm.GuestVM`, the ``vm``
  fixture's value (``exec``, ``console``, ``traces``, ``tasks``);
- :mod:`~vmboot.testing.snapshot_store`: one snapshot per guest configuration in the
  vmboot cache, made once under a file lock and restored read-only;
- :mod:`~vmboot.testing.verdicts`: whether a test's guest failed it, and the report sections.

Nothing here is imported until a test asks for a guest.
"""

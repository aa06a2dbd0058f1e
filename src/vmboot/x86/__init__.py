"""x86_64 architecture facts: control-register bits, MSRs, descriptors and page-table entries."""

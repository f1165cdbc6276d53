"""What only `gearctl cluster up` needs: the local cluster on loopback or network namespaces."""

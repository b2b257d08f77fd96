"""VM backends behind one interface (`base.Backend`); `select` is the one place that reads
the platform and picks one."""

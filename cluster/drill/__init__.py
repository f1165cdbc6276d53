"""What only `gearctl drill` needs: numbered workloads, the total-queue ledger, the scenarios."""

from cluster.cli import gearctl

gearctl()

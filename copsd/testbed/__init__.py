"""A CPU testbed: a synthetic crosslingual world and a tiny model pretrained on it, in which
COPSD's effect shows in minutes (see docs/testbed.md)."""

"""Data: phantom generators (`phantoms`), datalists (`datalist`), the phantoms CLI."""

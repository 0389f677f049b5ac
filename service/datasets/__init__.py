"""Datasets users bring: upload parsing (npz, csv, zip of class folders), validation, the
seeded split, preprocessing specs, and storage in the database in chunks."""

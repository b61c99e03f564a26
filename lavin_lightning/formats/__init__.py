"""Readers and validators of the public data files, shared by the data modules and the scorers.

Pure: they read and check files and records and return plain Python values; prompts,
tokenising and scoring live above them. A problem is a DataError that names the file, the
record and what was expected.
"""

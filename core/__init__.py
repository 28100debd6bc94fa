"""The ground floor: what every room shares and nothing else.

Levels and their names, clocks, time parsing and formatting, the detection → alerts hand-over
event and the SQLite opener. Imports nothing of GeoWarn's own; every other room may import it.
"""

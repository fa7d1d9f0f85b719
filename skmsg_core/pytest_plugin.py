"""skmsg's pytest plugin (``pytest11`` entry point): fixtures for tests of
skmsg programs and protocol plugins. Cheap to import: nothing heavy loads
until a fixture is used."""

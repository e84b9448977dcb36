"""Where processed IoT data lands: one interface (base.Store), SQLite by default, MongoDB for scale."""

"""The marketplace (shop) domain: catalog, orders, schemas, stop-list filter, search — on millrace's platform."""
